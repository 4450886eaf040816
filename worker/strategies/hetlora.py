"""HetLoRA (docs/methods.md#hetlora): truncation, norm-weighted zero-padded averaging, self-pruning.

State: the global factors at ``G = r_max`` (the federation's global rank, scale ``s(G)``), the
head, and in ``meta``: ``ranks`` (client id -> pruned rank) and ``tails`` (client id ->
``[rank, tail norm]`` of its last upload).

Round: client i gets the truncation ``B[:, :r_i]``, ``A[:r_i]`` (``s_g / s_i`` put back into B)
with ``r_i = min(budget, G, pruned rank)``. The server zero-pads every ``(s_i / s_g) B_i`` and
``A_i`` to G and averages them with the sparsity weights ``w_i = ||s_i B_i A_i||_F /
sum_k ||s_k B_k A_k||_F``, computed without dense matrices (``trace((B^T B)(A A^T))``).

Project decisions:

* Norm weights are computed **per module** (each layer is aggregated on its own). If every
  norm of a module is zero (e.g. B still zero), data weights are used for it.
* Self-pruning is decided on the server from the uploaded factors: with ``k = floor(gamma r_i)``
  the tail norm ``sum_modules ||B_i[:, k:]||_F ||A_i[k:, :]||_F`` is compared with the client's
  previous tail at the same rank; if it decreased, the client's rank becomes
  ``max(min_rank, k)`` from the next round on. With ``self_pruning`` on and ``prune_lambda > 0``
  the plan carries the client-side regularizer as :class:`TailPenalty` (``keep = k``,
  ``weight = lambda``): the SDK adds ``lambda sum_modules ||B[:, k:]||_F ||A[k:, :]||_F`` to its
  local loss, which is what pushes the tail towards zero so that the rule above fires.
* Known biases (by design of the method): the FedIT cross-term and tail dilution (column j is
  scaled by ``sum_{i: r_i > j} w_i < 1``). ``rank_normalization`` divides index j by
  ``sum_{i: r_i > j} w_i`` instead (the mean over the clients that hold it), which removes the
  dilution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fedlora_client._adapters import tail_norm
from fedlora_client.protocol import TailPenalty, lora_a_key, lora_b_key
from worker.linalg import frobenius_norm_product
from worker.strategies.base import (
    AggregationResult,
    ClientUpdate,
    Participant,
    PlanContext,
    ServerState,
)
from worker.strategies.common import average_heads, data_weights
from worker.strategies.fedavg import zero_pad_aggregate
from worker.strategies.global_lora import GlobalLoRAStrategy
from worker.strategies.params import HetLoRAParams


class HetLoRA(GlobalLoRAStrategy):
    """HetLoRA with sparsity-weighted aggregation and optional rank self-pruning."""

    name = "hetlora"
    params_model = HetLoRAParams
    params: HetLoRAParams

    def client_rank(self, state: ServerState, ctx: PlanContext, participant: Participant) -> int:
        rank = min(participant.rank_budget, self.state_rank(ctx))
        pruned = state.meta.get("ranks", {}).get(participant.client_id)
        return rank if pruned is None else min(rank, int(pruned))

    def keep_rank(self, rank: int) -> int:
        """``max(min_rank, floor(gamma r))``: the rank a client of ``rank`` would prune to."""
        return max(self.params.min_rank, math.floor(self.params.prune_gamma * rank))

    def plan_extras(
        self, state: ServerState, ctx: PlanContext, participant: Participant
    ) -> dict[str, Any]:
        hp = self.params
        rank = self.client_rank(state, ctx, participant)
        keep = self.keep_rank(rank)
        if not hp.self_pruning or hp.prune_lambda <= 0 or keep >= rank:
            return {}
        return {"tail_penalty": TailPenalty(keep=keep, weight=hp.prune_lambda)}

    def norm_weights(
        self, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> dict[str, list[float]]:
        """Per module: ``w_i = ||s_i B_i A_i||_F / sum_k ||s_k B_k A_k||_F``."""
        out: dict[str, list[float]] = {}
        fallback = data_weights(updates)
        for module in sorted(ctx.model.modules):
            ka, kb = lora_a_key(module), lora_b_key(module)
            norms = [
                u.lora.scaling
                * float(
                    frobenius_norm_product(
                        u.tensors[kb].to(self.device), u.tensors[ka].to(self.device)
                    )
                )
                for u in updates
            ]
            total = sum(norms)
            out[module] = [n / total for n in norms] if total > 0 else fallback
        return out

    def prune(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> tuple[dict[str, int], dict[str, list[float]]]:
        ranks: dict[str, int] = dict(state.meta.get("ranks", {}))
        tails: dict[str, list[float]] = dict(state.meta.get("tails", {}))
        if not self.params.self_pruning:
            return ranks, tails
        for u in updates:
            r = u.lora.rank
            keep = self.keep_rank(r)
            if keep >= r:
                continue
            tail = float(tail_norm(u.tensors, ctx.model.modules, keep))  # what clients penalize
            previous = tails.get(u.client_id)
            if previous is not None and int(previous[0]) == r and tail < previous[1]:
                ranks[u.client_id] = keep
            tails[u.client_id] = [float(r), tail]
        return ranks, tails

    def _aggregate(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> AggregationResult:
        weights = self.norm_weights(ctx, updates)
        previous = state if self.params.rank_normalization else None
        factors = zero_pad_aggregate(self, ctx, updates, weights, previous)
        heads = average_heads(ctx.model, updates, data_weights(updates))
        ranks, tails = self.prune(state, ctx, updates)
        return self.publish(
            ctx,
            factors | heads,
            meta={"ranks": ranks, "tails": tails},
            metrics={"num_updates": float(len(updates)), "pruned_clients": float(len(ranks))},
        )
