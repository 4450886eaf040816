"""Clients' held-out margin histograms, for the federated threshold calibration.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 20:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # earlier evaluations carry none: the calibration skips an adapter without them
    with op.batch_alter_table('adapter_evaluations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('margin_histogram', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('adapter_evaluations', schema=None) as batch_op:
        batch_op.drop_column('margin_histogram')
