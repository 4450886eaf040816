"""Aggregation claims (the sweeper re-enqueues lost jobs) and open-round requests.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 02:03:00.545953
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('federations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('open_requested_at', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('aggregation_claimed_by', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('aggregation_claimed_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('aggregation_enqueued_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column('aggregation_attempts', sa.Integer(), server_default=sa.text('0'), nullable=False)
        )



def downgrade() -> None:
    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.drop_column('aggregation_attempts')
        batch_op.drop_column('aggregation_enqueued_at')
        batch_op.drop_column('aggregation_claimed_until')
        batch_op.drop_column('aggregation_claimed_by')

    with op.batch_alter_table('federations', schema=None) as batch_op:
        batch_op.drop_column('open_requested_at')

