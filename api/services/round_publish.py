"""Publishing a round: the one transaction that completes it and starts what comes next."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import queue
from api.db import (
    Federation,
    FederationStatus,
    GlobalAdapter,
    Round,
    RoundKind,
    RoundState,
    Update,
    utcnow,
)
from api.services.federations import epsilon_spent
from api.services.round_steps import (
    completed_rounds,
    drop_outstanding,
    insert_round,
    job_values,
    mark_dropped,
    request_open,
    rowcount,
)
from api.services.round_types import JobMetrics
from fedlora_client.protocol import TrainingPlan

log = logging.getLogger(__name__)


def publish_round(
    *,
    session: Session,
    round_id: uuid.UUID,
    adapter_sha256: str,
    adapter_config_sha256: str,
    update_ids: Sequence[uuid.UUID],
    state_sha256: str | None = None,
    state_meta: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    job: JobMetrics | None = None,
    next_number: int | None = None,
    next_plans: Mapping[uuid.UUID, TrainingPlan] | None = None,
    next_kind: RoundKind = RoundKind.TRAINING,
    enqueue: queue.Enqueuer | None = None,
    dropped: Mapping[uuid.UUID, str] | None = None,
) -> bool:
    """Complete an aggregating round and record its global adapter; commits once.

    In ONE transaction: ``UPDATE rounds SET state='completed' WHERE id=:id AND
    state='aggregating'``; only if that changed a row, the global adapter is recorded with its
    lineage (``update_ids``, the strategy, epsilon), leftover tasks are dropped, and then the
    federation completes (all rounds done), or round ``next_number`` opens with
    ``next_plans`` (from ``round_to_open(after_round_id=round_id)``), or, without plans, an
    ``open_round`` job is requested after the commit. When this was the last training round,
    ``next_plans`` of ``next_kind=EVALUATION`` (from ``evaluation_to_open``) open the
    evaluation pass that scores the final adapter. Returns ``False`` (nothing changed) if
    the round was not aggregating: a duplicate job stops there. ``dropped`` (update id ->
    reason) are the round's updates the worker left out; each gets its reason. The adapter's
    epsilon is the most any client whose update was *used* has spent; a dropped client's
    ledger entry stays (it spent that epsilon on its own machine).
    Raises ``ValueError`` if ``update_ids`` are not accepted updates of this round.
    """
    now = utcnow()
    rnd = session.get(Round, round_id)
    if rnd is None:
        session.rollback()
        return False
    fed = session.get_one(
        Federation, rnd.federation_id, with_for_update=True, populate_existing=True
    )
    res = session.execute(
        sa.update(Round)
        .where(Round.id == round_id, Round.state == RoundState.AGGREGATING)
        .values(
            state=RoundState.COMPLETED,
            completed_at=now,
            aggregation_claimed_until=None,
            **job_values(job),
        )
        .execution_options(synchronize_session=False)
    )
    if rowcount(res) != 1:
        session.rollback()
        return False
    try:
        wanted = {uuid.UUID(str(u)) for u in update_ids}
        found = dict(
            session.execute(
                sa.select(Update.id, Update.client_id).where(
                    Update.round_id == round_id, Update.id.in_(list(wanted))
                )
            ).all()
        )
        if set(found) != wanted:
            missing = ", ".join(sorted(str(u) for u in wanted - set(found)))
            raise ValueError(f"update ids not accepted in round {round_id}: {missing}")
        spent = epsilon_spent(session=session, federation_id=fed.id)
        session.add(
            GlobalAdapter(
                round_id=round_id,
                federation_id=fed.id,
                round_number=rnd.number,
                adapter_sha256=adapter_sha256,
                adapter_config_sha256=adapter_config_sha256,
                state_sha256=state_sha256,
                state_meta=dict(state_meta or {}),
                strategy=fed.strategy,
                update_ids=sorted(str(u) for u in wanted),
                epsilon=max((spent.get(c, 0.0) for c in found.values()), default=0.0),
                metrics=dict(metrics or {}),
            )
        )
        mark_dropped(session, round_id, dropped or {})
        drop_outstanding(session, round_id)
        _what_next(session, fed, next_number, next_plans, now, next_kind)
        queue.commit_and_flush(session, enqueue)
    except BaseException:
        session.rollback()
        queue.discard(session)
        raise
    log.info("round %s published from %d update(s)", round_id, len(found))
    return True


def _what_next(
    session: Session,
    fed: Federation,
    next_number: int | None,
    next_plans: Mapping[uuid.UUID, TrainingPlan] | None,
    now: Any,
    next_kind: RoundKind = RoundKind.TRAINING,
) -> None:
    session.flush()
    if completed_rounds(session, fed.id) >= fed.num_rounds:
        if fed.status in (FederationStatus.RUNNING, FederationStatus.PAUSED):
            fed.status = FederationStatus.COMPLETED
            fed.finished_at = now
        if (
            next_kind == RoundKind.EVALUATION
            and next_plans
            and next_number is not None
            and fed.status == FederationStatus.COMPLETED
        ):
            try:  # the final adapter's score; publishing never fails for want of it
                with session.begin_nested():
                    insert_round(session, fed, next_number, next_plans, now, RoundKind.EVALUATION)
            except (IntegrityError, ValueError) as exc:
                log.warning("federation %s: no evaluation round (%s)", fed.id, exc)
        return
    if next_kind == RoundKind.EVALUATION:
        next_plans = None  # training is not over (a round was added meanwhile): plan it anew
    if fed.status != FederationStatus.RUNNING:
        return  # paused: resume requests the next round; cancelled: nothing more
    if next_plans and next_number is not None and len(next_plans) >= fed.min_clients:
        try:
            with session.begin_nested():
                insert_round(session, fed, next_number, next_plans, now)
            return
        except IntegrityError:
            pass  # the round exists already: fall through and let the worker re-check
    request_open(session, fed.id, now)
