"""The round lifecycle, shared by the API and the worker. Torch-free; keyword-only functions.

Every state change is a conditional UPDATE (``... WHERE state = <expected>``), so duplicated or
re-delivered jobs are no-ops, and jobs are enqueued only after the commit (:mod:`api.queue`).
Functions that change state commit their own transaction. ``enqueue`` defaults to Celery's
``send_task``; tests pass an :class:`api.queue.RecordingEnqueuer`.

Worker contract (see docs/architecture.md)::

    todo = round_to_open(session=s, federation_id=fid)           # None: nothing to open
    plans = {m.client_id: plan_for(m) for m in todo.selected}    # strategy plan hook
    open_round(session=s, federation_id=fid, number=todo.number, plans=plans)

    if claim_aggregation(session=s, round_id=rid, worker_id=me, seconds=600):
        inputs = aggregation_inputs(session=s, round_id=rid)     # None: not aggregating
        nxt = round_to_open(session=s, federation_id=fid, after_round_id=rid)
        publish_round(session=s, round_id=rid, adapter_sha256=..., adapter_config_sha256=...,
                      update_ids=[u.update_id for u in inputs.updates],
                      next_number=nxt.number if nxt else None, next_plans=...)

Epsilon is charged to the privacy ledger when an update is accepted (it has left the client
then, whatever happens to the round); a global adapter records the largest cumulative epsilon
among the clients whose updates it includes.
"""

from __future__ import annotations

import hashlib
import logging
import random
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import queue
from api.db import (
    Federation,
    FederationStatus,
    Round,
    RoundKind,
    RoundState,
    Task,
    TaskStatus,
    Update,
    utcnow,
)
from api.services.round_publish import publish_round
from api.services.round_steps import (
    ACTIVE_ROUND_STATES,
    OUTSTANDING,
    completed_rounds,
    drop_outstanding,
    fail_in_tx,
    insert_round,
    mark_dropped,
    next_number,
    rowcount,
)
from api.services.round_types import (
    AggregationInputs,
    JobMetrics,
    RoundToOpen,
    SweepResult,
)
from api.services.round_views import (
    build_aggregation_inputs,
    eligible_members,
    federation_config,
    previous_adapter,
)
from fedlora_client.protocol import TrainingPlan
from worker.celery_app import AGGREGATE_ROUND, OPEN_ROUND

MAX_AGGREGATION_ATTEMPTS = 5
log = logging.getLogger(__name__)


def round_seed(federation_id: uuid.UUID, number: int) -> int:
    """The deterministic seed of round ``number`` (participant sampling and planning)."""
    """The seed of round ``number`` (participant sampling, and the strategies' plan context)."""
    digest = hashlib.sha256(f"{federation_id}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def round_to_open(
    *, session: Session, federation_id: uuid.UUID, after_round_id: uuid.UUID | None = None
) -> RoundToOpen | None:
    """What the next round of ``federation_id`` would be, or ``None`` if none should open.

    ``None`` when the federation is not running, a round is open or aggregating (other than
    ``after_round_id``, the round being aggregated now, which then counts as completed), all
    rounds are done, or fewer than ``min_clients`` members are eligible. Read-only.
    """
    fed = session.get(Federation, federation_id)
    if fed is None or fed.status != FederationStatus.RUNNING:
        return None
    active = set(
        session.scalars(
            sa.select(Round.id).where(
                Round.federation_id == fed.id, Round.state.in_(ACTIVE_ROUND_STATES)
            )
        )
    )
    if active - {after_round_id} or (after_round_id is not None and after_round_id not in active):
        return None
    done = completed_rounds(session, fed.id) + (1 if after_round_id else 0)
    if done >= fed.num_rounds:
        return None
    eligible = eligible_members(session=session, federation=fed)
    if len(eligible) < fed.min_clients:
        return None
    number = next_number(session, fed.id)
    seed = round_seed(fed.id, number)
    rng = random.Random(seed)
    picked = rng.sample(eligible, min(fed.clients_per_round, len(eligible)))
    return RoundToOpen(
        federation=federation_config(fed),
        number=number,
        completed_rounds=done,
        eligible=eligible,
        selected=sorted(picked, key=lambda m: str(m.client_id)),
        previous=previous_adapter(session=session, federation_id=fed.id),
        seed=seed,
    )


def evaluation_to_open(
    *, session: Session, federation_id: uuid.UUID, after_round_id: uuid.UUID
) -> RoundToOpen | None:
    """The evaluation pass to plan when ``after_round_id`` (being aggregated) is the
    federation's last training round; ``None`` otherwise. Read-only.

    Its participants are every member that can evaluate (active, fingerprint matching, not
    revoked), whatever epsilon it spent: evaluating spends none. The worker plans them with
    ``evaluate_only`` plans naming the final adapter and hands them to
    ``publish_round(next_kind=RoundKind.EVALUATION, ...)``.
    """
    fed = session.get(Federation, federation_id)
    rnd = session.get(Round, after_round_id)
    if fed is None or fed.status not in (FederationStatus.RUNNING, FederationStatus.PAUSED):
        return None
    if rnd is None or rnd.kind != RoundKind.TRAINING or rnd.state != RoundState.AGGREGATING:
        return None
    if completed_rounds(session, fed.id) + 1 < fed.num_rounds:
        return None
    evaluated = session.scalar(
        sa.select(sa.func.count())
        .select_from(Round)
        .where(Round.federation_id == fed.id, Round.kind == RoundKind.EVALUATION)
    )
    members = eligible_members(session=session, federation=fed, within_budget=False)
    if evaluated or not members:
        return None
    number = next_number(session, fed.id)
    return RoundToOpen(
        federation=federation_config(fed),
        number=number,
        completed_rounds=fed.num_rounds,
        eligible=members,
        selected=members,
        previous=previous_adapter(session=session, federation_id=fed.id),
        seed=round_seed(fed.id, number),
    )


def open_round(
    *,
    session: Session,
    federation_id: uuid.UUID,
    number: int,
    plans: Mapping[uuid.UUID, TrainingPlan],
    enqueue: queue.Enqueuer | None = None,
) -> uuid.UUID | None:
    """Insert round ``number`` and one task per plan (keyed by client id) in one transaction.

    Returns the new round's id, or ``None`` (nothing changed) if the federation is no longer
    running, another round is open or aggregating, or round ``number`` exists already.
    Raises ``ValueError`` for plans of non-members or fewer plans than ``min_clients``.
    """
    fed = session.get(Federation, federation_id, with_for_update=True, populate_existing=True)
    busy = session.scalar(
        sa.select(sa.func.count())
        .select_from(Round)
        .where(Round.federation_id == federation_id, Round.state.in_(ACTIVE_ROUND_STATES))
    )
    if fed is None or fed.status != FederationStatus.RUNNING or busy:
        session.rollback()
        return None
    try:
        rnd = insert_round(session, fed, number, plans, utcnow())
        round_id = rnd.id
        queue.commit_and_flush(session, enqueue)
        log.info("federation %s: round %d open with %d tasks", federation_id, number, len(plans))
    except IntegrityError:
        session.rollback()
        return None
    except BaseException:
        session.rollback()
        raise
    return round_id


def _count(session: Session, stmt: sa.Select[Any]) -> int:
    return int(session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery())) or 0)


def maybe_close_round(
    *,
    session: Session,
    round_id: uuid.UUID,
    now: datetime | None = None,
    enqueue: queue.Enqueuer | None = None,
) -> str | None:
    """Move an open round on if it is due; returns its state afterwards (``None``: unknown).

    * enough updates and (no task outstanding or deadline passed): ``aggregating``, and
      ``fedlora.aggregate_round`` is enqueued after the commit;
    * deadline passed, or nothing outstanding, with too few updates: ``failed``, and
      ``fedlora.open_round`` is enqueued after the commit (a new round replaces it).
    """
    now = now or utcnow()
    rnd = session.get(Round, round_id, with_for_update=True, populate_existing=True)
    if rnd is None or rnd.state != RoundState.OPEN:
        state = rnd.state if rnd else None
        session.rollback()
        return state
    if rnd.kind == RoundKind.EVALUATION:
        return _close_evaluation(session, rnd, now, enqueue)
    updates = _count(session, sa.select(Update.id).where(Update.round_id == round_id))
    outstanding = _count(
        session, sa.select(Task.id).where(Task.round_id == round_id, Task.status.in_(OUTSTANDING))
    )
    deadline_passed = now >= rnd.deadline_at
    if updates >= rnd.min_updates and (outstanding == 0 or deadline_passed):
        res = session.execute(
            sa.update(Round)
            .where(Round.id == round_id, Round.state == RoundState.OPEN)
            .values(state=RoundState.AGGREGATING, aggregating_at=now, aggregation_enqueued_at=now)
            .execution_options(synchronize_session=False)
        )
        if rowcount(res) == 1:
            drop_outstanding(session, round_id)
            queue.defer(session, AGGREGATE_ROUND, str(round_id))
            queue.commit_and_flush(session, enqueue)
            log.info("round %s: aggregating %d update(s)", round_id, updates)
            return RoundState.AGGREGATING
    elif deadline_passed or outstanding == 0:
        reason = (
            f"{'deadline passed' if deadline_passed else 'every task ended'} with {updates} "
            f"update(s); the round needs {rnd.min_updates}"
        )
        if fail_in_tx(session, round_id, reason, now, None):
            queue.commit_and_flush(session, enqueue)
            log.warning("round %s failed: %s", round_id, reason)
            return RoundState.FAILED
    session.rollback()
    return session.scalar(sa.select(Round.state).where(Round.id == round_id))


def _close_evaluation(
    session: Session, rnd: Round, now: datetime, enqueue: queue.Enqueuer | None
) -> str:
    """An evaluation round ends when no task is outstanding or at its deadline: completed if
    any member reported (its reports are the final adapter's score), else failed. Nothing is
    aggregated and no round follows it."""
    outstanding = _count(
        session, sa.select(Task.id).where(Task.round_id == rnd.id, Task.status.in_(OUTSTANDING))
    )
    if outstanding and now < rnd.deadline_at:
        session.rollback()
        return RoundState.OPEN
    reported = _count(
        session,
        sa.select(Task.id).where(Task.round_id == rnd.id, Task.status == TaskStatus.REPORTED),
    )
    values: dict[str, Any] = (
        {"state": RoundState.COMPLETED, "completed_at": now}
        if reported
        else {
            "state": RoundState.FAILED,
            "failed_at": now,
            "failure_reason": "no member evaluated the final adapter before the deadline; "
            "it stays unscored",
        }
    )
    res = session.execute(
        sa.update(Round)
        .where(Round.id == rnd.id, Round.state == RoundState.OPEN)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if rowcount(res) != 1:
        session.rollback()
        return str(session.scalar(sa.select(Round.state).where(Round.id == rnd.id)))
    drop_outstanding(session, rnd.id)
    queue.commit_and_flush(session, enqueue)
    log.info("evaluation round %s: %s with %d report(s)", rnd.id, values["state"], reported)
    return str(values["state"])


def claim_aggregation(
    *, session: Session, round_id: uuid.UUID, worker_id: str, seconds: float
) -> bool:
    """Claim (or extend the claim on) an aggregating round for ``seconds``; commits.

    ``False`` if the round is not aggregating or another worker holds a live claim. The
    sweeper re-enqueues a round whose claim expired (the job died or its message was lost).
    """
    now = utcnow()
    res = session.execute(
        sa.update(Round)
        .where(
            Round.id == round_id,
            Round.state == RoundState.AGGREGATING,
            sa.or_(
                Round.aggregation_claimed_until.is_(None),
                Round.aggregation_claimed_until < now,
                Round.aggregation_claimed_by == worker_id,
            ),
        )
        .values(
            aggregation_claimed_by=worker_id,
            aggregation_claimed_until=now + timedelta(seconds=seconds),
            aggregation_attempts=Round.aggregation_attempts
            + sa.case((Round.aggregation_claimed_by == worker_id, 0), else_=1),
        )
        .execution_options(synchronize_session=False)
    )
    ok = rowcount(res) == 1
    session.commit()
    return ok


def aggregation_inputs(*, session: Session, round_id: uuid.UUID) -> AggregationInputs | None:
    """The accepted updates (with their plans) of an aggregating round; ``None`` otherwise."""
    rnd = session.get(Round, round_id)
    if rnd is None or rnd.state != RoundState.AGGREGATING:
        return None
    return build_aggregation_inputs(session=session, rnd=rnd)


def fail_round(
    *,
    session: Session,
    round_id: uuid.UUID,
    reason: str,
    job: JobMetrics | None = None,
    enqueue: queue.Enqueuer | None = None,
    dropped: Mapping[uuid.UUID, str] | None = None,
) -> bool:
    """Fail an open or aggregating round and request a new one; ``False`` if already ended.

    ``dropped`` (update id -> reason): updates the worker refused, recorded on each."""
    if not fail_in_tx(session, round_id, reason, utcnow(), job):
        session.rollback()
        return False
    mark_dropped(session, round_id, dropped or {})
    queue.commit_and_flush(session, enqueue)
    log.warning("round %s failed: %s", round_id, reason)
    return True


def sweep(
    *,
    session: Session,
    now: datetime | None = None,
    enqueue: queue.Enqueuer | None = None,
    lost_job_after_seconds: float = 120.0,
) -> SweepResult:
    """Enforce deadlines and leases, and re-enqueue lost jobs. Commits; safe to run anywhere.

    * expired leases: re-offered (task back to pending) before the round's deadline, dropped
      after it;
    * open rounds: :func:`maybe_close_round` (deadline with enough updates -> aggregating, with
      too few -> failed and a new round requested);
    * aggregating rounds whose claim expired, or unclaimed for ``lost_job_after_seconds``:
      ``fedlora.aggregate_round`` again; after ``MAX_AGGREGATION_ATTEMPTS`` claims, failed;
    * running federations that asked for a round ``lost_job_after_seconds`` ago and have none:
      ``fedlora.open_round`` again (it also retries when too few members were eligible).
    """
    now = now or utcnow()
    result = SweepResult()
    expired = session.execute(
        sa.select(Task.id, Round.deadline_at)
        .join(Round, Round.id == Task.round_id)
        .where(Task.status == TaskStatus.LEASED, Task.lease_expires_at < now)
    ).all()
    for task_id, deadline in expired:
        status = TaskStatus.PENDING if deadline > now else TaskStatus.DROPPED
        res = session.execute(
            sa.update(Task)
            .where(
                Task.id == task_id, Task.status == TaskStatus.LEASED, Task.lease_expires_at < now
            )
            .values(status=status, lease_owner=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
        if rowcount(res):
            if status == TaskStatus.PENDING:
                result.leases_reoffered += 1
            else:
                result.leases_dropped += 1
    session.commit()

    open_ids = session.scalars(sa.select(Round.id).where(Round.state == RoundState.OPEN)).all()
    for round_id in open_ids:
        state = maybe_close_round(session=session, round_id=round_id, now=now, enqueue=enqueue)
        if state == RoundState.AGGREGATING:
            result.rounds_aggregating.append(round_id)
        elif state == RoundState.FAILED:
            result.rounds_failed.append(round_id)

    stale = now - timedelta(seconds=lost_job_after_seconds)
    lost = session.scalars(
        sa.select(Round).where(
            Round.state == RoundState.AGGREGATING,
            sa.or_(
                Round.aggregation_claimed_until < now,
                sa.and_(
                    Round.aggregation_claimed_until.is_(None),
                    sa.or_(
                        Round.aggregation_enqueued_at.is_(None),
                        Round.aggregation_enqueued_at < stale,
                    ),
                ),
            ),
        )
    ).all()
    for rnd in lost:
        if rnd.aggregation_attempts >= MAX_AGGREGATION_ATTEMPTS:
            reason = f"aggregation did not finish after {rnd.aggregation_attempts} attempts"
            if fail_in_tx(session, rnd.id, reason, now, None):
                result.rounds_failed.append(rnd.id)
            continue
        rnd.aggregation_claimed_until = None
        rnd.aggregation_claimed_by = None
        rnd.aggregation_enqueued_at = now
        queue.defer(session, AGGREGATE_ROUND, str(rnd.id))
        result.aggregations_reenqueued.append(rnd.id)
    queue.commit_and_flush(session, enqueue)

    waiting = session.scalars(
        sa.select(Federation).where(
            Federation.status == FederationStatus.RUNNING,
            Federation.open_requested_at < stale,
            ~sa.exists().where(
                Round.federation_id == Federation.id, Round.state.in_(ACTIVE_ROUND_STATES)
            ),
        )
    ).all()
    for fed in waiting:
        fed.open_requested_at = now
        queue.defer(session, OPEN_ROUND, str(fed.id))
        result.opens_reenqueued.append(fed.id)
    queue.commit_and_flush(session, enqueue)
    return result


__all__ = [
    "MAX_AGGREGATION_ATTEMPTS",
    "AggregationInputs",
    "JobMetrics",
    "RoundToOpen",
    "SweepResult",
    "aggregation_inputs",
    "claim_aggregation",
    "eligible_members",
    "evaluation_to_open",
    "fail_round",
    "maybe_close_round",
    "open_round",
    "publish_round",
    "round_seed",
    "round_to_open",
    "sweep",
]
