"""Robust aggregation: federations' settings, members' max_examples, dropped updates.

Existing federations get the defaults (``{}``: weight share cap 0.5, adaptive norm bound);
existing members have no max_examples; no update was dropped before this revision.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("federations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("robust_aggregation", sa.JSON(), nullable=False, server_default="{}")
        )
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_examples", sa.Integer(), nullable=True))
    with op.batch_alter_table("updates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dropped_reason", sa.String(length=2048), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("updates", schema=None) as batch_op:
        batch_op.drop_column("dropped_reason")
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.drop_column("max_examples")
    with op.batch_alter_table("federations", schema=None) as batch_op:
        batch_op.drop_column("robust_aggregation")
