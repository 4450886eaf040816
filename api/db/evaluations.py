"""Federated evaluation: each client's score of a published global adapter on its own data."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from api.db.base import Base, CreatedMixin, IdMixin, utcnow


class AdapterEvaluation(IdMixin, CreatedMixin, Base):
    """One client's evaluation of one global adapter (the latest report of that client wins).

    Round N's tasks evaluate round N-1's adapter before they train; the evaluation round after
    the last training round evaluates the final one. The adapter's federated score is the
    ``num_examples``-weighted mean over its rows.
    """

    __tablename__ = "adapter_evaluations"
    __table_args__ = (sa.UniqueConstraint("adapter_id", "client_id"),)

    federation_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("federations.id", ondelete="CASCADE"), index=True
    )
    adapter_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("global_adapters.id", ondelete="CASCADE"), index=True
    )
    client_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("clients.id", ondelete="CASCADE"), index=True
    )
    task_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("tasks.id", ondelete="CASCADE"))
    num_examples: Mapped[int]
    loss: Mapped[float]
    accuracy: Mapped[float | None]
    margin_histogram: Mapped[list[list[int]] | None] = mapped_column(sa.JSON, default=None)
    """Two-label classification: the client's held-out margin counts (threshold calibration)."""
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
