"""Rounds, their tasks, uploads and updates, global adapters, the privacy ledger, the audit log."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from api.db.base import Base, CreatedMixin, IdMixin, utcnow


class RoundState(StrEnum):
    OPEN = "open"
    AGGREGATING = "aggregating"
    COMPLETED = "completed"
    FAILED = "failed"


class RoundKind(StrEnum):
    TRAINING = "training"
    EVALUATION = "evaluation"
    """The pass after the last training round: members evaluate the final global adapter."""


class TaskStatus(StrEnum):
    PENDING = "pending"
    LEASED = "leased"
    UPLOADED = "uploaded"
    REPORTED = "reported"
    DROPPED = "dropped"
    RELEASED = "released"
    """Given back before an upload, by its client (it cannot train) or an admin, with a reason."""


class UploadStatus(StrEnum):
    RECEIVING = "receiving"
    ACCEPTED = "accepted"


class Round(IdMixin, Base):
    __tablename__ = "rounds"
    __table_args__ = (sa.UniqueConstraint("federation_id", "number"),)

    federation_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("federations.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int]
    kind: Mapped[str] = mapped_column(
        sa.String(16), default=RoundKind.TRAINING, server_default=RoundKind.TRAINING.value
    )
    state: Mapped[str] = mapped_column(sa.String(16), default=RoundState.OPEN)
    min_updates: Mapped[int]
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    deadline_at: Mapped[datetime]
    aggregating_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    failure_reason: Mapped[str | None] = mapped_column(sa.String(2048))
    aggregation_claimed_by: Mapped[str | None] = mapped_column(sa.String(128))
    aggregation_claimed_until: Mapped[datetime | None]
    aggregation_enqueued_at: Mapped[datetime | None]
    aggregation_attempts: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    job_duration_seconds: Mapped[float | None]
    job_device: Mapped[str | None] = mapped_column(sa.String(64))
    job_peak_memory_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)


class Task(IdMixin, CreatedMixin, Base):
    """One selected client's work in one round; ``plan`` is a protocol.TrainingPlan dump."""

    __tablename__ = "tasks"
    __table_args__ = (sa.UniqueConstraint("round_id", "client_id"),)

    round_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("rounds.id", ondelete="CASCADE"), index=True
    )
    federation_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("federations.id", ondelete="CASCADE"), index=True
    )
    client_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("clients.id", ondelete="CASCADE"), index=True
    )
    plan: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(sa.String(16), default=TaskStatus.PENDING)
    lease_owner: Mapped[uuid.UUID | None]
    lease_expires_at: Mapped[datetime | None]
    lease_count: Mapped[int] = mapped_column(default=0)
    leased_at: Mapped[datetime | None]
    uploaded_at: Mapped[datetime | None]
    reported_at: Mapped[datetime | None]
    report_metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    released_at: Mapped[datetime | None]
    released_by: Mapped[str | None] = mapped_column(sa.String(16))
    release_reason: Mapped[str | None] = mapped_column(sa.String(1024))


class UploadSessionRow(IdMixin, CreatedMixin, Base):
    """A resumable upload of one update; ``(client_id, idempotency_key)`` is unique."""

    __tablename__ = "upload_sessions"
    __table_args__ = (sa.UniqueConstraint("client_id", "idempotency_key"),)

    task_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("tasks.id", ondelete="CASCADE"), index=True
    )
    client_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("clients.id", ondelete="CASCADE"), index=True
    )
    idempotency_key: Mapped[str] = mapped_column(sa.String(128))
    manifest: Mapped[dict[str, Any]]
    size: Mapped[int] = mapped_column(sa.BigInteger)
    offset: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    status: Mapped[str] = mapped_column(sa.String(16), default=UploadStatus.RECEIVING)
    update_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("updates.id", ondelete="SET NULL")
    )
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Update(IdMixin, Base):
    """An accepted, validated client update (its bytes live in the artifact store by hash)."""

    __tablename__ = "updates"

    task_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("tasks.id", ondelete="CASCADE"), unique=True
    )
    round_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("rounds.id", ondelete="CASCADE"), index=True
    )
    federation_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("federations.id", ondelete="CASCADE"), index=True
    )
    client_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("clients.id", ondelete="CASCADE"), index=True
    )
    sha256: Mapped[str] = mapped_column(sa.String(64))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    shapes: Mapped[dict[str, Any]]
    lora: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    num_examples: Mapped[int]
    epsilon: Mapped[float] = mapped_column(default=0.0)
    accepted_at: Mapped[datetime] = mapped_column(default=utcnow)
    dropped_reason: Mapped[str | None] = mapped_column(sa.String(2048))
    """Set when the worker left this update out of its round's aggregate, and why."""


class GlobalAdapter(IdMixin, CreatedMixin, Base):
    """The published result of one round, with its lineage."""

    __tablename__ = "global_adapters"

    round_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("rounds.id", ondelete="CASCADE"), unique=True
    )
    federation_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("federations.id", ondelete="CASCADE"), index=True
    )
    round_number: Mapped[int]
    adapter_sha256: Mapped[str] = mapped_column(sa.String(64))
    adapter_config_sha256: Mapped[str] = mapped_column(sa.String(64))
    state_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    state_meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    strategy: Mapped[str] = mapped_column(sa.String(32))
    update_ids: Mapped[list[Any]]
    epsilon: Mapped[float] = mapped_column(default=0.0)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)


class PrivacyLedgerEntry(IdMixin, CreatedMixin, Base):
    """Epsilon a client spent in one round (one row per released update)."""

    __tablename__ = "privacy_ledger"
    __table_args__ = (sa.UniqueConstraint("round_id", "client_id"),)

    federation_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("federations.id", ondelete="CASCADE"), index=True
    )
    client_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("clients.id", ondelete="CASCADE"), index=True
    )
    round_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("rounds.id", ondelete="CASCADE"))
    update_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("updates.id", ondelete="SET NULL")
    )
    epsilon: Mapped[float]


class AuditLogEntry(IdMixin, CreatedMixin, Base):
    __tablename__ = "audit_log"

    admin_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("admins.id", ondelete="SET NULL"), index=True
    )
    action: Mapped[str] = mapped_column(sa.String(64))
    object_type: Mapped[str] = mapped_column(sa.String(64))
    object_id: Mapped[str | None] = mapped_column(sa.String(64))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
