"""Federations' server optimizer (FedAvgM / FedAdam / FedYogi around the strategy).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 07:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # existing federations keep publishing their strategy's aggregate as is: {} is 'none'
    with op.batch_alter_table('federations', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('server_optimizer', sa.JSON(), nullable=False, server_default='{}')
        )


def downgrade() -> None:
    with op.batch_alter_table('federations', schema=None) as batch_op:
        batch_op.drop_column('server_optimizer')
