"""Worker health from the heartbeats worker and scheduler processes write to the database.

A process registers when it starts (:func:`register`), refreshes its row every
``interval_seconds`` (:func:`beat`) and marks it stopped on a clean shutdown (:func:`stop`).
It counts as alive while it has not stopped and its last report is at most
``STALE_INTERVALS`` intervals old, so one missed report (a busy host, a slow database) is not a
death. :func:`health` answers what the API and the dashboard show: whether a worker consuming
the aggregation queue and a scheduler are alive, and if not, since when none has reported.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from api.db import WorkerHeartbeat, WorkerKind, utcnow

STALE_INTERVALS = 3
"""A process that has not reported for this many of its intervals counts as gone."""
RETENTION = timedelta(days=7)
"""Rows of processes last seen longer ago than this are deleted when a process registers."""
MAX_LISTED = 50


def register(
    *,
    session: Session,
    kind: WorkerKind,
    hostname: str,
    pid: int,
    queues: Sequence[str],
    interval_seconds: float,
    now: datetime | None = None,
) -> uuid.UUID:
    """Record a process that just started; prune long-gone ones. Commits; returns its id."""
    now = now or utcnow()
    gone = WorkerHeartbeat.last_seen_at < now - RETENTION
    session.execute(sa.delete(WorkerHeartbeat).where(gone))
    row = WorkerHeartbeat(
        kind=kind,
        hostname=hostname[:255],
        pid=pid,
        queues=list(queues),
        interval_seconds=interval_seconds,
        started_at=now,
        last_seen_at=now,
    )
    session.add(row)
    session.commit()
    return row.id


def beat(*, session: Session, heartbeat_id: uuid.UUID, now: datetime | None = None) -> bool:
    """Refresh a process's report; ``False`` if its row is gone (register again). Commits."""
    res = session.execute(
        sa.update(WorkerHeartbeat)
        .where(WorkerHeartbeat.id == heartbeat_id)
        .values(last_seen_at=now or utcnow(), stopped_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return int(res.rowcount) == 1  # type: ignore[attr-defined]


def stop(*, session: Session, heartbeat_id: uuid.UUID, now: datetime | None = None) -> None:
    """Record a clean shutdown: the process stops counting as alive at once. Commits."""
    now = now or utcnow()
    session.execute(
        sa.update(WorkerHeartbeat)
        .where(WorkerHeartbeat.id == heartbeat_id)
        .values(last_seen_at=now, stopped_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def is_alive(row: WorkerHeartbeat, now: datetime) -> bool:
    stale = timedelta(seconds=STALE_INTERVALS * row.interval_seconds)
    return row.stopped_at is None and now - row.last_seen_at <= stale


@dataclass(frozen=True)
class WorkerHealth:
    """What is alive now, and when the last one of each kind reported."""

    queue: str
    workers_alive: int
    schedulers_alive: int
    last_worker_seen_at: datetime | None
    last_scheduler_seen_at: datetime | None
    processes: list[tuple[WorkerHeartbeat, bool]] = field(default_factory=list)
    """The ``MAX_LISTED`` processes seen last, newest first, with whether each is alive."""

    @property
    def status(self) -> str:
        if not self.workers_alive:
            return "no_worker"
        if not self.schedulers_alive:
            return "no_scheduler"
        return "ok"

    @property
    def message(self) -> str | None:
        """One sentence for a person: what is missing, since when, what it means, what to do."""
        if not self.workers_alive:
            since = _since(self.last_worker_seen_at, "aggregation worker")
            return (
                f"{since}: rounds will not open or aggregate. Start one with "
                f"`fedlora worker --beat` (it must consume the '{self.queue}' queue)."
            )
        if not self.schedulers_alive:
            since = _since(self.last_scheduler_seen_at, "scheduler")
            return (
                f"{since}: round deadlines, expired leases and lost jobs are not handled. Run "
                "exactly one `fedlora scheduler`, or start a worker with `--beat`."
            )
        return None


def _since(when: datetime | None, what: str) -> str:
    if when is None:
        return f"No {what} has ever reported"
    return f"No {what} has reported since {when.isoformat(timespec='seconds')}"


def health(*, session: Session, queue: str, now: datetime | None = None) -> WorkerHealth:
    """Workers consuming ``queue`` and schedulers: how many are alive, when each kind last
    reported. Read-only."""
    now = now or utcnow()
    rows = session.scalars(
        sa.select(WorkerHeartbeat).order_by(WorkerHeartbeat.last_seen_at.desc())
    ).all()
    workers = [r for r in rows if r.kind == WorkerKind.WORKER and queue in (r.queues or [])]
    schedulers = [r for r in rows if r.kind == WorkerKind.SCHEDULER]
    return WorkerHealth(
        queue=queue,
        workers_alive=sum(is_alive(r, now) for r in workers),
        schedulers_alive=sum(is_alive(r, now) for r in schedulers),
        last_worker_seen_at=max((r.last_seen_at for r in workers), default=None),
        last_scheduler_seen_at=max((r.last_seen_at for r in schedulers), default=None),
        processes=[(r, is_alive(r, now)) for r in rows[:MAX_LISTED]],
    )
