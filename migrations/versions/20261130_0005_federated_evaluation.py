"""Federated evaluation: clients' scores of global adapters, and the evaluation round kind.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 07:11:01.977202
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('adapter_evaluations',
    sa.Column('federation_id', sa.Uuid(), nullable=False),
    sa.Column('adapter_id', sa.Uuid(), nullable=False),
    sa.Column('client_id', sa.Uuid(), nullable=False),
    sa.Column('task_id', sa.Uuid(), nullable=False),
    sa.Column('num_examples', sa.Integer(), nullable=False),
    sa.Column('loss', sa.Double(), nullable=False),
    sa.Column('accuracy', sa.Double(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['adapter_id'], ['global_adapters.id'], name=op.f('fk_adapter_evaluations_adapter_id_global_adapters'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['client_id'], ['clients.id'], name=op.f('fk_adapter_evaluations_client_id_clients'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['federation_id'], ['federations.id'], name=op.f('fk_adapter_evaluations_federation_id_federations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_adapter_evaluations_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_adapter_evaluations')),
    sa.UniqueConstraint('adapter_id', 'client_id', name=op.f('uq_adapter_evaluations_adapter_id_client_id'))
    )
    with op.batch_alter_table('adapter_evaluations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_adapter_evaluations_adapter_id'), ['adapter_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_adapter_evaluations_client_id'), ['client_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_adapter_evaluations_federation_id'), ['federation_id'], unique=False)

    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), server_default='training', nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.drop_column('kind')

    with op.batch_alter_table('adapter_evaluations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_adapter_evaluations_federation_id'))
        batch_op.drop_index(batch_op.f('ix_adapter_evaluations_client_id'))
        batch_op.drop_index(batch_op.f('ix_adapter_evaluations_adapter_id'))

    op.drop_table('adapter_evaluations')
