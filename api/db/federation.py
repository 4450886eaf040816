"""Federations and the membership of clients in them (with each member's rank budget)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from api.db.base import Base, CreatedMixin, IdMixin, utcnow


class FederationStatus(StrEnum):
    DRAFT = "draft"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class Federation(IdMixin, CreatedMixin, Base):
    """One training run across organizations. JSON columns hold protocol models' dumps."""

    __tablename__ = "federations"

    name: Mapped[str] = mapped_column(sa.String(128), unique=True)
    description: Mapped[str] = mapped_column(sa.String(2048), default="")
    base_model_id: Mapped[str] = mapped_column(sa.String(256))
    task_type: Mapped[str] = mapped_column(sa.String(32))
    model_spec: Mapped[dict[str, Any]]
    target_modules: Mapped[list[Any]]
    strategy: Mapped[str] = mapped_column(sa.String(32))
    strategy_params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    server_optimizer: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    robust_aggregation: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    global_rank: Mapped[int]
    num_rounds: Mapped[int]
    clients_per_round: Mapped[int]
    min_clients: Mapped[int]
    round_deadline_seconds: Mapped[int]
    local_training: Mapped[dict[str, Any]]
    dp: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(sa.String(16), default=FederationStatus.DRAFT)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    open_requested_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Membership(IdMixin, CreatedMixin, Base):
    """A client's seat in a federation: its rank budget and what it reported."""

    __tablename__ = "memberships"
    __table_args__ = (sa.UniqueConstraint("federation_id", "client_id"),)

    federation_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("federations.id", ondelete="CASCADE"), index=True
    )
    client_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("clients.id", ondelete="CASCADE"), index=True
    )
    rank_budget: Mapped[int]
    active: Mapped[bool] = mapped_column(default=True)
    fingerprint: Mapped[str | None] = mapped_column(sa.String(64))
    fingerprint_reported_at: Mapped[datetime | None]
    num_examples: Mapped[int | None]
    max_examples: Mapped[int | None]
    """The admin's cap on this member's aggregation weight (its claimed num_examples)."""
