"""Shared base of the strategies whose state is one global LoRA of rank G (+ the head).

FedAvg, HetLoRA, PreLort, FlexLoRA, FSLoRA and SDFLoRA keep the global factors under PEFT keys
at rank ``G`` with the federation's scale ``s_g = s(G)``, so the published adapter is the state
itself (``ctx.lora_spec(G)``). A client of rank ``r_i = min(budget, G)`` starts from the rank-
``r_i`` prefix. Its effective start update ``s_i B_i A_i`` must equal ``s_g B[:, :r] A[:r]``, so
the factor ``s_g / s_i`` is put back into B (docs/methods.md#conventions), or as ``sqrt`` on
both sides for a balanced split (SDFLoRA).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from fedlora_client.protocol import LoraSpec, adapter_shapes, lora_a_key, lora_b_key
from worker.strategies import errors
from worker.strategies.base import (
    AggregationResult,
    ClientAssignment,
    ClientUpdate,
    Participant,
    PlanContext,
    ServerState,
    Strategy,
)
from worker.strategies.common import init_factors, init_heads, to_cpu


class GlobalLoRAStrategy(Strategy):
    """A strategy whose state is the global factors at :meth:`state_rank` plus the head."""

    start_split: ClassVar[Literal["b", "balanced"]] = "b"
    """How the start prefix carries the scale ratio ``s_g / s_i``: all in B, or sqrt each side."""

    def state_rank(self, ctx: PlanContext) -> int:
        return ctx.global_rank

    def client_rank(self, state: ServerState, ctx: PlanContext, participant: Participant) -> int:
        return min(participant.rank_budget, self.state_rank(ctx))

    def client_lora(
        self, state: ServerState, ctx: PlanContext, participant: Participant
    ) -> LoraSpec:
        return ctx.lora_spec(self.client_rank(state, ctx, participant))

    def init_state(self, ctx: PlanContext) -> ServerState:
        rank = self.state_rank(ctx)
        tensors = init_factors(ctx, rank, "init") | init_heads(ctx)
        return ServerState(tensors=tensors, meta={"strategy": self.name, "rank": rank})

    def check_state(self, state: ServerState, ctx: PlanContext) -> None:
        """Raise :class:`StateMismatchError` unless the state holds the model's factors at G."""
        rank = self.state_rank(ctx)
        for key, shape in adapter_shapes(ctx.model, rank).items():
            t = state.tensors.get(key)
            if t is None or tuple(t.shape) != shape:
                got = None if t is None else tuple(t.shape)
                raise errors.StateMismatchError(f"state tensor {key}: expected {shape}, got {got}")

    def start_tensors(
        self,
        state: ServerState,
        ctx: PlanContext,
        rank: int,
        scaling: float,
        split: Literal["b", "balanced"] = "b",
    ) -> dict[str, Tensor]:
        """Rank-``rank`` prefix of the global factors at the client's ``scaling``, plus heads."""
        ratio = ctx.scaling(self.state_rank(ctx)) / scaling
        cb, ca = (ratio, 1.0) if split == "b" else (math.sqrt(ratio), math.sqrt(ratio))
        out: dict[str, Tensor] = {}
        for module in ctx.model.modules:
            out[lora_b_key(module)] = state.tensors[lora_b_key(module)][:, :rank] * cb
            out[lora_a_key(module)] = state.tensors[lora_a_key(module)][:rank, :] * ca
        for key in ctx.model.extra_trainable:
            out[key] = state.tensors[key]
        return to_cpu(out)

    def change_blocks(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate],
        weights: Sequence[float],
    ) -> list[tuple[float, dict[str, Tensor]]]:  # fmt: skip
        """``(coefficient, factors)`` blocks whose stacked product is the old global update plus
        the weighted clients' changes: ``W + sum_i w_i (s_i B_i A_i - s_g B[:, :r_i] A[:r_i])``.

        Every client started from the rank-``r_i`` prefix of the state (:meth:`start_tensors`),
        so the starts sum to ``s_g B diag(c) A`` with ``c_j = sum_{i: r_i > j} w_i``: the old
        update enters once, as ``s_g B diag(1 - c) A``, and the stack has rank
        ``G + sum_i r_i`` (not ``G + 2 sum_i r_i``). A round in which every client returns its
        start gives back ``W`` exactly.
        """
        rank = self.state_rank(ctx)
        cover = torch.zeros(rank, dtype=torch.float64)
        for w, u in zip(weights, updates, strict=True):
            cover[: u.lora.rank] += w
        keep = (1.0 - cover).float().unsqueeze(-1)
        old: dict[str, Tensor] = {}
        for module in ctx.model.modules:
            old[lora_b_key(module)] = state.tensors[lora_b_key(module)]
            old[lora_a_key(module)] = state.tensors[lora_a_key(module)] * keep
        clients = [(w * u.lora.scaling, u.tensors) for w, u in zip(weights, updates, strict=True)]
        return [(ctx.scaling(rank), old), *clients]

    def plan_extras(
        self, state: ServerState, ctx: PlanContext, participant: Participant
    ) -> dict[str, Any]:
        """Extra :class:`ClientAssignment` fields (nested truncations, private module, ...)."""
        return {}

    def plan(self, state: ServerState, ctx: PlanContext) -> dict[str, ClientAssignment]:
        self.check_state(state, ctx)
        if not ctx.participants:
            raise errors.PlanError("no participants to plan")
        plans: dict[str, ClientAssignment] = {}
        for p in ctx.participants:
            lora = self.client_lora(state, ctx, p)
            plans[p.client_id] = ClientAssignment(
                client_id=p.client_id,
                lora=lora,
                start=self.start_tensors(state, ctx, lora.rank, lora.scaling, self.start_split),
                start_lora=lora,
                **self.plan_extras(state, ctx, p),
            )
        return plans

    def validate_updates(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> None:
        self.check_state(state, ctx)
        super().validate_updates(state, ctx, updates)

    def publish(
        self,
        ctx: PlanContext,
        tensors: dict[str, Tensor],
        meta: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        extra_state: dict[str, Tensor] | None = None,
    ) -> AggregationResult:
        """Result whose adapter is ``tensors`` (factors at G + heads) at ``ctx.lora_spec(G)``."""
        rank = self.state_rank(ctx)
        adapter = to_cpu(tensors)
        state_meta = {"strategy": self.name, "rank": rank} | (meta or {})
        state = ServerState(tensors=adapter | to_cpu(extra_state or {}), meta=state_meta)
        return AggregationResult(
            state=state, adapter=adapter, lora=ctx.lora_spec(rank), metrics=metrics or {}
        )
