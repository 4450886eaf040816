"""PreLort (docs/methods.md#prelort, reconstructed from the paper's abstract): nested LoRA.

State: the global prefix-ordered factors at ``G = r_max`` (the federation's global rank) and the
head.

Round: client i gets the prefix ``B[:, :r_i]``, ``A[:r_i]`` with ``r_i = min(budget, G)`` and a
set of truncation levels ``T_i`` (``nested_truncations``; it always includes ``r_i``). Per local
step the client samples ``b`` uniformly from ``T_i`` and trains ``s B_i[:, :b] A_i[:b, :]``
(the stochastic variant). The server averages each rank index over the clients that cover it:
``B[:, j] <- sum_{i: r_i > j} w_i B_i[:, j] / sum_{i: r_i > j} w_i`` (and rows of A); indices
no participant covers keep their value.

Project decisions (the paper leaves them open):

* **Rank-independent scale**: every client trains with the global scale ``s_g = s(G)``
  (``lora_alpha = s_g * r_i``, plain LoRA), so a prefix means the same thing at every
  truncation and every client rank; no rescaling is needed at the server.
* The server averages the uploaded parameters (equivalent to averaging deltas, since every
  covering client started from the same broadcast prefix); weights are data-size ``p_i``.
* Truncation levels: ``segments`` (the distinct participant ranks <= r_i, i.e. the segment
  boundaries), ``powers_of_two`` or ``rank_only``.
* Not exact: it removes HetLoRA's dilution, not the within-segment cross-term.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from fedlora_client.protocol import LoraSpec, lora_a_key, lora_b_key
from worker.linalg import segment_average
from worker.strategies.base import (
    AggregationResult,
    ClientUpdate,
    Participant,
    PlanContext,
    ServerState,
    spec_with_scaling,
)
from worker.strategies.common import average_heads, data_weights
from worker.strategies.global_lora import GlobalLoRAStrategy
from worker.strategies.params import PreLortParams


class PreLort(GlobalLoRAStrategy):
    """Prefix-nested training plans and segment-wise aggregation."""

    name = "prelort"
    params_model = PreLortParams
    params: PreLortParams

    def client_lora(
        self, state: ServerState, ctx: PlanContext, participant: Participant
    ) -> LoraSpec:
        rank = self.client_rank(state, ctx, participant)
        return spec_with_scaling(rank, ctx.scaling(self.state_rank(ctx)))

    def truncations(self, ctx: PlanContext, rank: int) -> list[int]:
        """The truncation levels ``T_i`` of a client of ``rank`` (sorted, includes ``rank``)."""
        policy = self.params.truncation_levels
        levels = {rank}
        if policy == "segments":
            levels |= {
                min(p.rank_budget, self.state_rank(ctx))
                for p in ctx.participants
                if min(p.rank_budget, self.state_rank(ctx)) <= rank
            }
        elif policy == "powers_of_two":
            levels |= {1 << j for j in range(rank.bit_length()) if (1 << j) <= rank}
        return sorted(levels)

    def plan_extras(
        self, state: ServerState, ctx: PlanContext, participant: Participant
    ) -> dict[str, Any]:
        rank = self.client_rank(state, ctx, participant)
        return {"nested_truncations": self.truncations(ctx, rank)}

    def _aggregate(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> AggregationResult:
        p = data_weights(updates, self.params.weighting)
        dev = self.device
        out: dict[str, Tensor] = {}
        for module in sorted(ctx.model.modules):
            ka, kb = lora_a_key(module), lora_b_key(module)
            out[kb] = segment_average(
                [u.tensors[kb].to(dev) for u in updates], p, state.tensors[kb].to(dev), rank_dim=-1
            )
            out[ka] = segment_average(
                [u.tensors[ka].to(dev) for u in updates], p, state.tensors[ka].to(dev), rank_dim=-2
            )
        heads = average_heads(ctx.model, updates, data_weights(updates))
        return self.publish(ctx, out | heads, metrics={"num_updates": float(len(updates))})
