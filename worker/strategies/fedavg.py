"""FedAvg / FedIT (METHODS.md §5.1): average A and B separately. The homogeneous baseline.

State: the global factors at the federation's global rank ``G`` (scale ``s(G)``) and the head.

Project decisions:

* Clients train at ``r_i = min(budget, G)`` with the federation's scale ``s(r_i)``. With equal
  ranks this is exactly FedIT, ``B <- sum p_i B_i`` and ``A <- sum p_i A_i``. With unequal ranks the
  factors are zero-padded to G first (a FedIT generalisation; it dilutes the tail like HetLoRA).
* Effective updates: client factors are brought to the global scale before averaging,
  ``B_i <- (s_i / s_g) B_i``, so ``s_g B_i' A_i = s_i B_i A_i`` (METHODS.md §1).
* Not exact: the FedIT cross-term ``sum_i p_i (B_i - Bbar)(A_i - Abar)`` remains (§1).
* A rank component that no client covers ends with B column and A row zero; its A row is
  re-drawn (product unchanged) so that it stays trainable.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from fedlora_client.protocol import lora_a_key, lora_b_key
from worker.linalg import padded_weighted_sum
from worker.strategies.adapters import generator
from worker.strategies.base import AggregationResult, ClientUpdate, PlanContext, ServerState
from worker.strategies.common import average_heads, data_weights, refill_dead_components
from worker.strategies.global_lora import GlobalLoRAStrategy
from worker.strategies.params import FedAvgParams


def zero_pad_aggregate(
    strategy: GlobalLoRAStrategy,
    ctx: PlanContext,
    updates: Sequence[ClientUpdate],
    weights_per_module: dict[str, list[float]],
) -> dict[str, Tensor]:
    """``B = sum_i w_i (s_i / s_g) pad(B_i)``, ``A = sum_i w_i pad(A_i)`` per module (on device)."""
    rank = strategy.state_rank(ctx)
    s_g = ctx.scaling(rank)
    dev = strategy.device
    out: dict[str, Tensor] = {}
    for module in sorted(ctx.model.modules):
        ka, kb = lora_a_key(module), lora_b_key(module)
        w = weights_per_module[module]
        wb = [wi * u.lora.scaling / s_g for wi, u in zip(w, updates, strict=True)]
        B = padded_weighted_sum([u.tensors[kb].to(dev) for u in updates], wb, rank, rank_dim=-1)
        A = padded_weighted_sum([u.tensors[ka].to(dev) for u in updates], w, rank, rank_dim=-2)
        gen = generator(ctx.federation_id, ctx.seed, "refill", ctx.round_number, module)
        out[kb], out[ka] = refill_dead_components(B, A, gen)
    return out


class FedAvg(GlobalLoRAStrategy):
    """FedIT: data-weighted average of the (zero-padded) factors."""

    name = "fedavg"
    params_model = FedAvgParams
    params: FedAvgParams

    def _aggregate(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> AggregationResult:
        p = data_weights(updates, self.params.weighting)
        factors = zero_pad_aggregate(self, ctx, updates, dict.fromkeys(ctx.model.modules, p))
        heads = average_heads(ctx.model, updates, data_weights(updates))
        return self.publish(ctx, factors | heads, metrics={"num_updates": float(len(updates))})
