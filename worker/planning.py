"""Glue between the database's view of a round and the strategies' hooks.

* :func:`federation_context` builds the strategy's :class:`PlanContext` from the federation
  and a round's participants; :func:`round_participants` rebuilds exactly that participant list
  from a round's tasks, so ``aggregate`` sees the context ``plan`` saw (the rank budget each
  plan was made for is in the plan).
* :func:`make_plans` runs the planning hook and writes every start/merge artifact to the store;
  every plan also names the latest published global adapter (:func:`published_ref`), which the
  client evaluates on its own data before training (federated evaluation).
* :func:`evaluation_plans` plans the evaluation pass after the last training round: evaluate
  the final adapter, train nothing.
* :func:`load_state` / :func:`store_result` move server state and global adapters between the
  strategies and the content-addressed artifact store (safetensors + JSON, never pickle).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from torch import Tensor

from api.db import Task
from api.services.round_types import FederationConfig, Member, PreviousAdapter
from api.storage import ArtifactStore
from fedlora_client.protocol import ArtifactRef, DPPlan, LoraSpec, TrainingPlan
from worker.strategies.adapters import derive_seed, tensors_to_bytes
from worker.strategies.base import (
    STATE_META,
    STATE_TENSORS,
    AggregationResult,
    Participant,
    PlanContext,
    ServerState,
    Strategy,
)
from worker.strategies.params import validate_params
from worker.strategies.plans import encode_tensors, training_plan


def federation_context(
    fed: FederationConfig,
    number: int,
    seed: int,
    members: Iterable[Member | Participant],
) -> PlanContext:
    participants = tuple(
        m
        if isinstance(m, Participant)
        else Participant(client_id=str(m.client_id), rank_budget=m.rank_budget)
        for m in members
    )
    return PlanContext(
        federation_id=str(fed.federation_id),
        round_number=number,
        total_rounds=fed.num_rounds,
        seed=seed,
        task_type=fed.task_type,
        model=fed.model,
        global_rank=fed.global_rank,
        lora_alpha=fed.training.lora_alpha,
        use_rslora=fed.training.use_rslora,
        params=validate_params(fed.strategy, fed.strategy_params),
        participants=participants,
    )


@dataclass(frozen=True)
class RoundParticipants:
    seed: int
    participants: tuple[Participant, ...]


def round_participants(*, session: Session, round_id: uuid.UUID, seed: int) -> RoundParticipants:
    """The participants a round was planned for, from its tasks (dropped ones included)."""
    rows = session.execute(
        sa.select(Task.client_id, Task.plan).where(Task.round_id == round_id)
    ).all()
    participants = []
    for client_id, plan in sorted(rows, key=lambda r: str(r[0])):
        budget = TrainingPlan.model_validate(plan).rank_budget
        if budget is None:
            raise ValueError(f"task of client {client_id} has no rank budget in its plan")
        participants.append(Participant(client_id=str(client_id), rank_budget=budget))
    return RoundParticipants(seed=seed, participants=tuple(participants))


def _put(store: ArtifactStore, data: bytes) -> str:
    return store.put_bytes(data).sha256


def _store_tensors(store: ArtifactStore, tensors: dict[str, Tensor], lora: LoraSpec) -> ArtifactRef:
    data, ref = encode_tensors(tensors, lora)
    store.put_bytes(data, expected_sha256=ref.sha256)
    return ref


def adapter_ref(store: ArtifactStore, adapter_sha256: str, lora: LoraSpec) -> ArtifactRef:
    """A stored global adapter's weights file as a plan references it."""
    return ArtifactRef(sha256=adapter_sha256, size=store.size(adapter_sha256), lora=lora)


def published_ref(store: ArtifactStore, previous: PreviousAdapter | None) -> ArtifactRef | None:
    """The latest published global adapter as a plan references it (its rank and scale from
    its ``adapter_config.json``); ``None`` before round 1 has published."""
    if previous is None:
        return None
    with store.open(previous.adapter_config_sha256) as f:
        config = json.loads(f.read())
    lora = LoraSpec(
        rank=int(config["r"]),
        lora_alpha=float(config["lora_alpha"]),
        use_rslora=bool(config.get("use_rslora", False)),
    )
    return adapter_ref(store, previous.adapter_sha256, lora)


def make_plans(
    store: ArtifactStore,
    strategy: Strategy,
    state: ServerState,
    ctx: PlanContext,
    fed: FederationConfig,
    global_adapter: ArtifactRef | None = None,
) -> dict[uuid.UUID, TrainingPlan]:
    """Run the planning hook; store each start (and merge) artifact; return wire plans that
    name ``global_adapter`` (the latest published one) for the clients to evaluate."""
    plans: dict[uuid.UUID, TrainingPlan] = {}
    budgets = {p.client_id: p.rank_budget for p in ctx.participants}
    for client_id, a in strategy.plan(state, ctx).items():
        start = _store_tensors(store, a.start, a.start_lora)
        merge = None
        if a.merge is not None and a.merge_lora is not None:
            merge = _store_tensors(store, a.merge, a.merge_lora)
        plan = training_plan(
            a,
            ctx,
            strategy=fed.strategy,
            base_model_id=fed.base_model_id,
            start=start,
            merge=merge,
            training=fed.training,
            dp=fed.dp,
            seed=derive_seed(ctx.seed, "client", client_id),
        )
        lora = plan.lora.model_copy(update={"dropout": fed.training.lora_dropout})
        plans[uuid.UUID(client_id)] = plan.model_copy(
            update={
                "lora": lora,
                "rank_budget": budgets[client_id],
                "global_adapter": global_adapter,
            }
        )
    return plans


def evaluation_plans(
    fed: FederationConfig, members: Iterable[Member], final: ArtifactRef, seed: int
) -> dict[uuid.UUID, TrainingPlan]:
    """The evaluation pass after the last training round: each member evaluates ``final``
    (base model + the final global adapter) and reports; it trains and uploads nothing, so its
    ``lora``/``start`` merely describe that adapter."""
    dp = DPPlan(**fed.dp.model_dump(), planned_rounds=max(1, fed.num_rounds))
    return {
        m.client_id: TrainingPlan(
            strategy=fed.strategy,
            task_type=fed.task_type,
            base_model_id=fed.base_model_id,
            model=fed.model,
            lora=final.lora,
            rank_budget=m.rank_budget,
            start=final,
            training=fed.training,
            dp=dp,
            seed=derive_seed(seed, "evaluate", str(m.client_id)),
            global_adapter=final,
            evaluate_only=True,
        )
        for m in members
    }


def load_state(store: ArtifactStore, previous: PreviousAdapter | None) -> ServerState | None:
    """The server state published with ``previous``; ``None`` before the first round."""
    if previous is None or previous.state_sha256 is None:
        return None
    with store.open(previous.state_sha256) as f:
        tensors = f.read()
    meta = json.dumps(previous.state_meta, sort_keys=True).encode()
    return ServerState.from_files({STATE_TENSORS: tensors, STATE_META: meta})


@dataclass(frozen=True)
class StoredResult:
    adapter_sha256: str
    config_sha256: str
    state_sha256: str
    state_meta: Mapping[str, Any]


def store_result(
    store: ArtifactStore, result: AggregationResult, ctx: PlanContext, fed: FederationConfig
) -> StoredResult:
    """Write the global adapter (PEFT files) and the new server state to the store."""
    config = result.adapter_config(ctx, base_model_id=fed.base_model_id)
    files = result.state.to_files()
    return StoredResult(
        adapter_sha256=_put(store, tensors_to_bytes(result.adapter)),
        config_sha256=_put(store, json.dumps(config, indent=2, sort_keys=True).encode()),
        state_sha256=_put(store, files[STATE_TENSORS]),
        state_meta=json.loads(files[STATE_META]),
    )
