"""Heartbeats of the worker processes: the database's record of who is alive to run jobs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from api.db.base import Base, IdMixin, utcnow


class WorkerKind(StrEnum):
    WORKER = "worker"
    """A Celery worker consuming job queues (opens and aggregates rounds)."""
    SCHEDULER = "scheduler"
    """Celery beat: enqueues the deadline sweeper (embedded in a worker with ``--beat``)."""


class WorkerHeartbeat(IdMixin, Base):
    """One worker or scheduler process, from its start to its last report.

    The process inserts its row when it starts, refreshes ``last_seen_at`` every
    ``interval_seconds`` and sets ``stopped_at`` on a clean shutdown; a process that died
    without saying so is recognised by a ``last_seen_at`` older than a few intervals.
    """

    __tablename__ = "worker_heartbeats"

    kind: Mapped[str] = mapped_column(sa.String(16), default=WorkerKind.WORKER)
    hostname: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int]
    queues: Mapped[list[Any]] = mapped_column(default=list)
    interval_seconds: Mapped[float]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    stopped_at: Mapped[datetime | None]
