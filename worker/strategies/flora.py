"""FLoRA (docs/methods.md#flora): stacking (exact); clients merge it and start a fresh LoRA.

State: the **cumulative** stacked adapter of all rounds so far, ``B_cum (m x R_cum)`` and
``A_cum (R_cum x d)`` at scale 1 (``lora_alpha = R_cum``, plain LoRA), so that
``B_cum A_cum = sum_rounds sum_i p_i s_i B_i A_i``; ``meta['cum_rank'] = R_cum``; plus the head.

Round: every client trains a **fresh** LoRA at its full rank budget ``r_i`` with the federation's
scale (A seeded Kaiming-uniform per client and round, B zero). Before training it merges the
cumulative adapter (``ClientAssignment.merge``) into its **pristine** base weights, so a client
that skipped rounds is still up to date. The server appends the round's stack
``[p_1 s_1 B_1, ..., p_K s_K B_K]``, ``[A_1; ...; A_K]`` to the cumulative one (the official code
puts ``p_i`` on A; putting ``p_i s_i`` on B gives the same product). The new stack's product is
exactly ``sum_i p_i s_i B_i A_i`` (no cross-term).

Project decisions:

* The published global adapter is the cumulative stack (for the original base) plus the head.
* ``R_cum`` grows by ``sum_i r_i`` each round. Once it exceeds ``cap = min(4096, max over
  modules of min(d_out, d_in))`` the stack is re-factored with the (factored or, past
  ``min(m, d)``, dense) SVD to rank ``cap`` and a balanced split. This is lossless whenever
  ``cap >= min(d_out, d_in)`` of every module, since no product can have a larger rank.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from fedlora_client.protocol import LoraSpec, lora_a_key, lora_b_key
from worker.linalg import factored_svd
from worker.strategies import errors
from worker.strategies.base import (
    AggregationResult,
    ClientAssignment,
    ClientUpdate,
    Participant,
    PlanContext,
    ServerState,
    Strategy,
    spec_with_scaling,
)
from worker.strategies.common import average_heads, data_weights, init_factors, init_heads, to_cpu
from worker.strategies.common import shape_groups as _groups
from worker.strategies.flexlora import stack_group
from worker.strategies.params import FLoRAParams

MAX_RANK = 4096
"""Largest rank a LoraSpec allows."""


class FLoRA(Strategy):
    """Stacking with a cumulative merge adapter and fresh client LoRAs."""

    name = "flora"
    params_model = FLoRAParams
    params: FLoRAParams

    def init_state(self, ctx: PlanContext) -> ServerState:
        return ServerState(tensors=init_heads(ctx), meta={"strategy": self.name, "cum_rank": 0})

    def client_lora(
        self, state: ServerState, ctx: PlanContext, participant: Participant
    ) -> LoraSpec:
        return ctx.lora_spec(min(participant.rank_budget, MAX_RANK))

    @staticmethod
    def cap(ctx: PlanContext) -> int:
        return min(MAX_RANK, max(min(shape) for shape in ctx.model.modules.values()))

    def check_state(self, state: ServerState, ctx: PlanContext) -> int:
        rank = int(state.meta.get("cum_rank", -1))
        if rank < 0:
            raise errors.StateMismatchError("FLoRA state without meta['cum_rank']")
        for module, (d_out, d_in) in ctx.model.modules.items():
            for key, shape in (
                (lora_a_key(module), (rank, d_in)),
                (lora_b_key(module), (d_out, rank)),
            ):
                t = state.tensors.get(key)
                if rank and (t is None or tuple(t.shape) != shape):
                    raise errors.StateMismatchError(f"state tensor {key} should be {shape}")
        for key, head_shape in ctx.model.extra_trainable.items():
            if key not in state.tensors or list(state.tensors[key].shape) != head_shape:
                raise errors.StateMismatchError(f"state head {key} should be {head_shape}")
        return rank

    def cumulative(self, state: ServerState, ctx: PlanContext) -> dict[str, Tensor]:
        keys = [k for m in ctx.model.modules for k in (lora_a_key(m), lora_b_key(m))]
        return {k: state.tensors[k] for k in keys} if state.meta["cum_rank"] else {}

    def plan(self, state: ServerState, ctx: PlanContext) -> dict[str, ClientAssignment]:
        cum_rank = self.check_state(state, ctx)
        if not ctx.participants:
            raise errors.PlanError("no participants to plan")
        heads = {k: state.tensors[k] for k in ctx.model.extra_trainable}
        merge = to_cpu(self.cumulative(state, ctx)) if cum_rank else None
        merge_lora = spec_with_scaling(cum_rank, 1.0) if cum_rank else None
        plans: dict[str, ClientAssignment] = {}
        for p in ctx.participants:
            lora = self.client_lora(state, ctx, p)
            fresh = init_factors(ctx, lora.rank, "fresh", ctx.round_number, p.client_id)
            plans[p.client_id] = ClientAssignment(
                client_id=p.client_id,
                lora=lora,
                start=to_cpu(fresh | heads),
                start_lora=lora,
                merge=merge,
                merge_lora=merge_lora,
            )
        return plans

    def validate_updates(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> None:
        self.check_state(state, ctx)
        super().validate_updates(state, ctx, updates)

    def _aggregate(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> AggregationResult:
        p = data_weights(updates, self.params.weighting)
        blocks = [(pi * u.lora.scaling, u.tensors) for pi, u in zip(p, updates, strict=True)]
        old_rank = int(state.meta["cum_rank"])
        if old_rank:
            blocks.insert(0, (1.0, state.tensors))
        new_rank = old_rank + sum(u.lora.rank for u in updates)
        cap = self.cap(ctx)
        rank = min(new_rank, cap)
        out: dict[str, Tensor] = {}
        for modules in _groups(ctx.model).values():
            B, A = stack_group(modules, blocks, self.device, column_major=False)
            if new_rank > cap:
                B, A = factored_svd(B, A, cap).factors(cap, 1.0, "balanced")
            for layer, module in enumerate(modules):
                out[lora_b_key(module)], out[lora_a_key(module)] = B[layer], A[layer]
        heads = average_heads(ctx.model, updates, data_weights(updates))
        adapter = to_cpu(out | heads)
        return AggregationResult(
            state=ServerState(tensors=adapter, meta={"strategy": self.name, "cum_rank": rank}),
            adapter=adapter,
            lora=spec_with_scaling(rank, 1.0),
            metrics={"num_updates": float(len(updates)), "stack_rank": float(rank)},
        )
