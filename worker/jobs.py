"""The worker's jobs as plain functions: open a round, aggregate a round, sweep.

``worker/tasks.py`` wraps each in a thin Celery task; tests call them directly with a
:class:`Runtime`. Every job re-checks state in the database first and changes it only through
``api.services.rounds``' conditional updates, so running a job twice, concurrently, or after a
crash publishes a round at most once and loses no update:

* ``open_round`` plans and inserts round N; a second insert of round N is a no-op;
* ``aggregate_round`` claims the round (a claim another live job holds makes it stop), keeps
  the claim alive from a heartbeat thread, aggregates, plans the next round, and publishes with
  ``UPDATE ... WHERE state='aggregating'``: only one attempt can win. A job killed mid-way
  leaves its claim to expire; the sweeper enqueues the round again.
"""

from __future__ import annotations

import logging
import resource
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_safetensors
from sqlalchemy.orm import Session, sessionmaker

from api import queue
from api.config import Settings
from api.db import RoundKind
from api.db.session import engine_from_settings, make_session_factory
from api.services import rounds
from api.services.round_publish import publish_round
from api.services.round_types import AggregationInputs, JobMetrics, SweepResult
from api.storage import ArtifactStore
from worker.calibration import calibrate_threshold
from worker.planning import (
    adapter_ref,
    evaluation_plans,
    federation_context,
    load_state,
    make_plans,
    published_ref,
    round_participants,
    store_result,
)
from worker.strategies import get_strategy
from worker.strategies.base import (
    AggregationResult,
    ClientUpdate,
    PlanContext,
    ServerState,
    Strategy,
)
from worker.strategies.errors import StrategyError, UpdateValidationError

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What a job needs: settings, a session factory, the artifact store, the enqueuer."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: ArtifactStore
    enqueue: queue.Enqueuer | None = None

    @classmethod
    def from_settings(cls, settings: Settings, enqueue: queue.Enqueuer | None = None) -> Runtime:
        return cls(
            settings=settings,
            sessions=make_session_factory(engine_from_settings(settings)),
            store=ArtifactStore(settings.resolved_artifact_dir),
            enqueue=enqueue,
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session:
            yield session


# --------------------------------------------------------------------------- open


def open_round(rt: Runtime, federation_id: str) -> str | None:
    """Plan and open the federation's next round; ``None`` if none should open now."""
    fid = uuid.UUID(federation_id)
    with rt.session() as session:
        todo = rounds.round_to_open(session=session, federation_id=fid)
    if todo is None:
        return None
    fed = todo.federation
    strategy = get_strategy(
        fed.strategy,
        fed.strategy_params,
        device=rt.settings.device,
        server_optimizer=fed.server_optimizer,
    )
    ctx = federation_context(fed, todo.number, todo.seed, todo.selected)
    state = load_state(rt.store, todo.previous) or strategy.init_state(ctx)
    plans = make_plans(rt.store, strategy, state, ctx, fed, published_ref(rt.store, todo.previous))
    with rt.session() as session:
        round_id = rounds.open_round(
            session=session, federation_id=fid, number=todo.number, plans=plans, enqueue=rt.enqueue
        )
    log.info("federation %s: round %s opened=%s", fid, todo.number, round_id is not None)
    return None if round_id is None else str(round_id)


# --------------------------------------------------------------------------- aggregate


class _ClaimKeeper:
    """Extends the job's claim on a round every third of its lifetime, until stopped."""

    def __init__(self, rt: Runtime, round_id: uuid.UUID, worker_id: str, seconds: float):
        self._args = (rt, round_id, worker_id, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="claim-keeper")

    def _run(self) -> None:
        rt, round_id, worker_id, seconds = self._args
        while not self._stop.wait(seconds / 3):
            try:
                with rt.session() as session:
                    rounds.claim_aggregation(
                        session=session, round_id=round_id, worker_id=worker_id, seconds=seconds
                    )
            except Exception:  # a missed beat only shortens the claim; the job goes on
                log.exception("could not extend the claim on round %s", round_id)

    def __enter__(self) -> _ClaimKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _load_updates(
    store: ArtifactStore, inputs: AggregationInputs
) -> tuple[list[ClientUpdate], dict[str, str]]:
    """The round's updates with their start tensors, and ``{client id: why}`` for those whose
    files could not be read (that update is dropped, not the round)."""
    updates, unreadable = [], {}
    for u in inputs.updates:
        try:
            with store.open(u.sha256) as f:
                # safetensors only: parsing never runs code (uploads were validated on arrival)
                tensors = {k: v.to(torch.float32) for k, v in load_safetensors(f.read()).items()}
            with store.open(u.plan.start.sha256) as f:
                start = {k: v.to(torch.float32) for k, v in load_safetensors(f.read()).items()}
        except Exception as exc:
            unreadable[str(u.client_id)] = f"its stored update could not be read ({exc})"
            continue
        updates.append(
            ClientUpdate(
                client_id=str(u.client_id),
                lora=u.plan.lora,
                tensors=tensors,
                num_examples=u.num_examples,
                max_examples=u.max_examples,
                start=start,
            )
        )
    return updates, unreadable


def _screen(
    strategy: Strategy, state: ServerState, ctx: PlanContext, updates: list[ClientUpdate]
) -> tuple[list[ClientUpdate], dict[str, str]]:
    """Validate each update on its own: ``(the valid ones, {client id: why for the others})``.

    An invalid update is dropped, not the round (issue #14). Errors that are not about one
    update (a server state that does not fit) propagate and fail the round."""
    kept, dropped = [], {}
    for u in updates:
        try:
            strategy.validate_updates(state, ctx, [u])
        except UpdateValidationError as exc:
            dropped[u.client_id] = str(exc)
            continue
        kept.append(u)
    return kept, dropped


def _aggregate_usable(
    strategy: Strategy,
    state: ServerState,
    ctx: PlanContext,
    updates: list[ClientUpdate],
    dropped: dict[str, str],
    min_updates: int,
) -> AggregationResult:
    """Aggregate ``updates``; an update the strategy refuses mid-way (a named
    :class:`UpdateValidationError`) is dropped too and the rest aggregated again. Raises
    :class:`TooFewUpdatesError` once fewer than ``min_updates`` remain."""
    while True:
        if len(updates) < max(1, min_updates):
            raise TooFewUpdatesError(
                f"{len(updates)} usable update(s), the round needs {min_updates}; dropped: "
                + "; ".join(f"{cid}: {why}" for cid, why in sorted(dropped.items()))
            )
        try:
            return strategy.aggregate(state, ctx, updates)
        except UpdateValidationError as exc:
            if exc.client_id is None or exc.client_id not in {u.client_id for u in updates}:
                raise
            dropped[exc.client_id] = str(exc)
            updates = [u for u in updates if u.client_id != exc.client_id]


class TooFewUpdatesError(StrategyError):
    """Fewer usable updates than the round's minimum remain after dropping the bad ones."""


def _peak_memory(device: str) -> int:
    """CUDA: the job's peak allocation (the stats are reset when it starts). CPU: the worker
    process's peak resident memory so far (``ru_maxrss``), an upper bound of the job's, since
    the OS keeps no per-interval peak; with the solo pool one process runs one job at a time."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def aggregate_round(rt: Runtime, round_id: str, worker_id: str | None = None) -> bool:
    """Aggregate an ``aggregating`` round and publish it; ``False`` if this job did not publish."""
    rid = uuid.UUID(round_id)
    worker_id = worker_id or f"worker-{uuid.uuid4()}"
    claim_seconds = float(rt.settings.aggregation_claim_seconds)
    with rt.session() as session:
        if not rounds.claim_aggregation(
            session=session, round_id=rid, worker_id=worker_id, seconds=claim_seconds
        ):
            log.info("round %s: not aggregating or claimed by another job; nothing to do", rid)
            return False
        inputs = rounds.aggregation_inputs(session=session, round_id=rid)
        if inputs is None:
            return False
        planned = round_participants(
            session=session,
            round_id=rid,
            seed=rounds.round_seed(inputs.federation.federation_id, inputs.round_number),
        )
    fed = inputs.federation
    strategy = get_strategy(
        fed.strategy,
        fed.strategy_params,
        device=rt.settings.device,
        server_optimizer=fed.server_optimizer,
        robust=fed.robust_aggregation,
    )
    device = str(strategy.device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with _ClaimKeeper(rt, rid, worker_id, claim_seconds):
        ctx = federation_context(fed, inputs.round_number, planned.seed, planned.participants)
        state = load_state(rt.store, inputs.previous) or strategy.init_state(ctx)
        by_client = {str(u.client_id): u.update_id for u in inputs.updates}
        dropped: dict[str, str] = {}
        try:
            loaded, dropped = _load_updates(rt.store, inputs)
            usable, invalid = _screen(strategy, state, ctx, loaded)
            dropped |= invalid
            result = _aggregate_usable(strategy, state, ctx, usable, dropped, inputs.min_updates)
            result = calibrate_threshold(result, state, ctx, fed.training, inputs.margin_histograms)
        except StrategyError as exc:  # deterministic: retrying cannot help
            with rt.session() as session:
                rounds.fail_round(
                    session=session,
                    round_id=rid,
                    reason=str(exc),
                    enqueue=rt.enqueue,
                    dropped={by_client[c]: why for c, why in dropped.items()},
                )
            return False
        if dropped:
            log.warning("round %s: dropped %d update(s): %s", rid, len(dropped), dropped)
        result.metrics = dict(result.metrics) | {"dropped_updates": float(len(dropped))}
        stored = store_result(rt.store, result, ctx, fed)
        global_ref = adapter_ref(rt.store, stored.adapter_sha256, result.lora)
        with rt.session() as session:
            nxt = rounds.round_to_open(
                session=session, federation_id=fed.federation_id, after_round_id=rid
            )
            final = None
            if nxt is None:  # the last training round? then the evaluation pass comes next
                final = rounds.evaluation_to_open(
                    session=session, federation_id=fed.federation_id, after_round_id=rid
                )
        next_plans, next_kind = None, RoundKind.TRAINING
        if nxt is not None:
            next_ctx = federation_context(fed, nxt.number, nxt.seed, nxt.selected)
            next_plans = make_plans(rt.store, strategy, result.state, next_ctx, fed, global_ref)
        elif final is not None:  # the last round: the evaluation pass scores its adapter
            nxt, next_kind = final, RoundKind.EVALUATION
            next_plans = evaluation_plans(fed, final.selected, global_ref, final.seed)
    job = JobMetrics(
        duration_seconds=time.perf_counter() - started,
        device=device,
        peak_memory_bytes=_peak_memory(device),
    )
    with rt.session() as session:
        published = publish_round(
            session=session,
            round_id=rid,
            adapter_sha256=stored.adapter_sha256,
            adapter_config_sha256=stored.config_sha256,
            update_ids=[u.update_id for u in inputs.updates if str(u.client_id) not in dropped],
            dropped={by_client[c]: why for c, why in dropped.items()},
            state_sha256=stored.state_sha256,
            state_meta=stored.state_meta,
            metrics=result.metrics,
            job=job,
            next_number=None if nxt is None else nxt.number,
            next_plans=next_plans,
            next_kind=next_kind,
            enqueue=rt.enqueue,
        )
    log.info("round %s published=%s in %.2fs on %s", rid, published, job.duration_seconds, device)
    return published


# --------------------------------------------------------------------------- sweep


def sweep(rt: Runtime) -> SweepResult:
    """Enforce deadlines and leases; re-enqueue lost jobs (``api.services.rounds.sweep``)."""
    with rt.session() as session:
        return rounds.sweep(
            session=session,
            enqueue=rt.enqueue,
            lost_job_after_seconds=float(rt.settings.aggregation_claim_seconds),
        )
