"""Worker health: which worker and scheduler processes report, and what is missing."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from api.schemas.common import PublicModel
from api.services.workers import WorkerHealth


class WorkerProcessPublic(PublicModel):
    id: uuid.UUID
    kind: str = Field(description="'worker' (runs jobs) or 'scheduler' (enqueues the sweeper).")
    hostname: str
    pid: int
    queues: list[str]
    interval_seconds: float = Field(description="How often the process reports.")
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None = Field(description="Set when the process shut down cleanly.")
    alive: bool = False


class WorkersHealthSummary(BaseModel):
    """Whether the jobs that move rounds on can run, without naming hosts."""

    status: Literal["ok", "no_worker", "no_scheduler"]
    queue: str = Field(description="The aggregation queue the API sends jobs to.")
    workers_alive: int
    schedulers_alive: int
    last_worker_seen_at: datetime | None = Field(
        description="When a worker on the queue last reported (null: never)."
    )
    last_scheduler_seen_at: datetime | None
    message: str | None = Field(description="What is missing, since when, and what to do.")

    @classmethod
    def of(cls, health: WorkerHealth) -> WorkersHealthSummary:
        return cls(
            status=health.status,  # type: ignore[arg-type]
            queue=health.queue,
            workers_alive=health.workers_alive,
            schedulers_alive=health.schedulers_alive,
            last_worker_seen_at=health.last_worker_seen_at,
            last_scheduler_seen_at=health.last_scheduler_seen_at,
            message=health.message,
        )


class WorkersHealthPublic(WorkersHealthSummary):
    """The summary plus the processes seen last (for admins)."""

    processes: list[WorkerProcessPublic]

    @classmethod
    def of(cls, health: WorkerHealth) -> WorkersHealthPublic:
        summary = WorkersHealthSummary.of(health).model_dump()
        processes = [
            WorkerProcessPublic.model_validate(row).model_copy(update={"alive": alive})
            for row, alive in health.processes
        ]
        return cls(**summary, processes=processes)
