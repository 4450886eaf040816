"""Write-side steps of the round lifecycle, run inside a caller's transaction (no commits)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from api import queue
from api.db import (
    Federation,
    FederationStatus,
    Membership,
    Round,
    RoundKind,
    RoundState,
    Task,
    TaskStatus,
    Update,
)
from api.services.round_types import JobMetrics
from fedlora_client.protocol import TrainingPlan
from worker.celery_app import OPEN_ROUND

ACTIVE_ROUND_STATES = (RoundState.OPEN, RoundState.AGGREGATING)
OUTSTANDING = (TaskStatus.PENDING, TaskStatus.LEASED)


def rowcount(result: Any) -> int:
    return int(result.rowcount)


def completed_rounds(session: Session, federation_id: uuid.UUID) -> int:
    """Completed training rounds (the evaluation pass after the last one does not count)."""
    return int(
        session.scalar(
            sa.select(sa.func.count())
            .select_from(Round)
            .where(
                Round.federation_id == federation_id,
                Round.state == RoundState.COMPLETED,
                Round.kind == RoundKind.TRAINING,
            )
        )
        or 0
    )


def next_number(session: Session, federation_id: uuid.UUID) -> int:
    top = session.scalar(
        sa.select(sa.func.max(Round.number)).where(Round.federation_id == federation_id)
    )
    return int(top or 0) + 1


def insert_round(
    session: Session,
    fed: Federation,
    number: int,
    plans: Mapping[uuid.UUID, TrainingPlan],
    now: datetime,
    kind: RoundKind = RoundKind.TRAINING,
) -> Round:
    """Insert round ``number`` and one pending task per plan; flushes (unique number).

    An evaluation round (``kind``) needs one plan, not ``min_clients``: every report counts.
    """
    plans_by_client = {uuid.UUID(str(k)): v for k, v in plans.items()}
    fewest = 1 if kind == RoundKind.EVALUATION else fed.min_clients
    if len(plans_by_client) < fewest:
        raise ValueError(f"{len(plans_by_client)} plans given but min_clients is {fewest}")
    members = set(
        session.scalars(
            sa.select(Membership.client_id).where(
                Membership.federation_id == fed.id,
                Membership.active.is_(True),
                Membership.client_id.in_(list(plans_by_client)),
            )
        )
    )
    strangers = sorted(str(c) for c in plans_by_client if c not in members)
    if strangers:
        raise ValueError(f"plans for clients that are not active members: {', '.join(strangers)}")
    rnd = Round(
        federation_id=fed.id,
        number=number,
        kind=kind,
        state=RoundState.OPEN,
        min_updates=min(fewest, len(plans_by_client)),
        opened_at=now,
        deadline_at=now + timedelta(seconds=fed.round_deadline_seconds),
    )
    session.add(rnd)
    session.flush()
    for client_id, plan in sorted(plans_by_client.items(), key=lambda kv: str(kv[0])):
        session.add(
            Task(
                round_id=rnd.id,
                federation_id=fed.id,
                client_id=client_id,
                plan=plan.model_dump(mode="json"),
                status=TaskStatus.PENDING,
            )
        )
    fed.open_requested_at = None
    session.flush()
    return rnd


def drop_outstanding(session: Session, round_id: uuid.UUID) -> None:
    session.execute(
        sa.update(Task)
        .where(Task.round_id == round_id, Task.status.in_(OUTSTANDING))
        .values(status=TaskStatus.DROPPED, lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )


def request_open(session: Session, federation_id: uuid.UUID, now: datetime) -> None:
    """Ask the worker (after the commit) to open the next round, if the federation runs."""
    fed = session.get(Federation, federation_id)
    if fed is not None and fed.status == FederationStatus.RUNNING:
        fed.open_requested_at = now
        queue.defer(session, OPEN_ROUND, str(federation_id))


def job_values(job: JobMetrics | None) -> dict[str, Any]:
    if job is None:
        return {}
    return {
        "job_duration_seconds": job.duration_seconds,
        "job_device": job.device,
        "job_peak_memory_bytes": job.peak_memory_bytes,
    }


def fail_in_tx(
    session: Session, round_id: uuid.UUID, reason: str, now: datetime, job: JobMetrics | None
) -> bool:
    """Conditionally fail an open/aggregating round, drop its tasks, request a new round."""
    res = session.execute(
        sa.update(Round)
        .where(Round.id == round_id, Round.state.in_(ACTIVE_ROUND_STATES))
        .values(
            state=RoundState.FAILED,
            failed_at=now,
            failure_reason=reason[:2048],
            aggregation_claimed_until=None,
            **job_values(job),
        )
        .execution_options(synchronize_session=False)
    )
    if rowcount(res) != 1:
        return False
    drop_outstanding(session, round_id)
    fed_id = session.scalar(sa.select(Round.federation_id).where(Round.id == round_id))
    if fed_id is not None:
        request_open(session, fed_id, now)
    return True


def mark_dropped(session: Session, round_id: uuid.UUID, dropped: Mapping[uuid.UUID, str]) -> None:
    """Record on each update of ``dropped`` (update id -> reason) why the worker left it out."""
    for update_id, reason in dropped.items():
        session.execute(
            sa.update(Update)
            .where(Update.id == update_id, Update.round_id == round_id)
            .values(dropped_reason=reason[:2048])
            .execution_options(synchronize_session=False)
        )
