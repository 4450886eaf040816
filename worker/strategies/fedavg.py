"""FedAvg / FedIT (docs/methods.md#fedavg): average A and B separately. The homogeneous baseline.

State: the global factors at the federation's global rank ``G`` (scale ``s(G)``) and the head.

Project decisions:

* Clients train at ``r_i = min(budget, G)`` with the federation's scale ``s(r_i)``. With equal
  ranks this is exactly FedIT, ``B <- sum p_i B_i`` and ``A <- sum p_i A_i``. With unequal ranks the
  factors are zero-padded to G first (a FedIT generalisation; it dilutes the tail like HetLoRA).
* Effective updates: client factors are brought to the global scale before averaging,
  ``B_i <- (s_i / s_g) B_i``, so ``s_g B_i' A_i = s_i B_i A_i``
  (docs/methods.md#conventions).
* Not exact: the FedIT cross-term ``sum_i p_i (B_i - Bbar)(A_i - Abar)`` remains
  (docs/methods.md#conventions).
* A rank component that no client covers ends with B column and A row zero; its A row is
  re-drawn (product unchanged) so that it stays trainable.
* Zero-padding dilutes: in a round where every client returns its start unchanged, column j
  of B and row j of A are multiplied by ``sum_{i: r_i > j} p_i``, so the global product moves
  (``tests/worker/test_noop_rounds.py`` pins the amount). ``rank_normalization`` averages
  each index over the clients that hold it instead (PreLort's segment-wise rule); such a
  round is then a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from fedlora_client.protocol import lora_a_key, lora_b_key
from worker.linalg import padded_weighted_sum, segment_average
from worker.strategies.adapters import generator
from worker.strategies.base import AggregationResult, ClientUpdate, PlanContext, ServerState
from worker.strategies.common import average_heads, data_weights, refill_dead_components
from worker.strategies.global_lora import GlobalLoRAStrategy
from worker.strategies.params import FedAvgParams
from worker.strategies.robust import robust_factors


def zero_pad_aggregate(
    strategy: GlobalLoRAStrategy,
    ctx: PlanContext,
    updates: Sequence[ClientUpdate],
    weights_per_module: dict[str, list[float]],
    previous: ServerState | None = None,
) -> dict[str, Tensor]:
    """``B = sum_i w_i (s_i / s_g) pad(B_i)``, ``A = sum_i w_i pad(A_i)`` per module (on device).

    With ``previous`` (rank-aware normalization) each rank index is instead the weighted mean
    over the clients that hold it (:func:`segment_average`); indices nobody holds keep
    ``previous``'s value. A round in which every client returns its start is then a no-op.
    """
    rank = strategy.state_rank(ctx)
    s_g = ctx.scaling(rank)
    dev = strategy.device
    out: dict[str, Tensor] = {}
    for module in sorted(ctx.model.modules):
        ka, kb = lora_a_key(module), lora_b_key(module)
        w = weights_per_module[module]
        to_global = [u.lora.scaling / s_g for u in updates]
        Bs = [u.tensors[kb].to(dev) for u in updates]
        As = [u.tensors[ka].to(dev) for u in updates]
        if previous is not None:
            B_old, A_old = previous.tensors[kb].to(dev), previous.tensors[ka].to(dev)
            B = segment_average(Bs, w, B_old, rank_dim=-1, scales=to_global)
            A = segment_average(As, w, A_old, rank_dim=-2)
        else:
            wb = [wi * c for wi, c in zip(w, to_global, strict=True)]
            B = padded_weighted_sum(Bs, wb, rank, rank_dim=-1)
            A = padded_weighted_sum(As, w, rank, rank_dim=-2)
        gen = generator(ctx.federation_id, ctx.seed, "refill", ctx.round_number, module)
        out[kb], out[ka] = refill_dead_components(B, A, gen)
    return out


class FedAvg(GlobalLoRAStrategy):
    """FedIT: data-weighted average of the (zero-padded) factors."""

    name = "fedavg"
    params_model = FedAvgParams
    params: FedAvgParams
    robust_rule: tuple[str, float] | None = None
    """``(rule, trim_fraction)``: a coordinate-wise median or trimmed mean instead of the weighted
    mean, set by :class:`worker.strategies.robust.RobustAggregation`."""

    def _robust_factors(
        self,
        state: ServerState,
        ctx: PlanContext,
        updates: Sequence[ClientUpdate],
        rule: str,
        trim_fraction: float,
    ) -> dict[str, Tensor]:
        factors = robust_factors(
            ctx, updates, state, self.state_rank(ctx), rule, trim_fraction, self.device
        )
        for module in sorted(ctx.model.modules):
            ka, kb = lora_a_key(module), lora_b_key(module)
            gen = generator(ctx.federation_id, ctx.seed, "refill", ctx.round_number, module)
            factors[kb], factors[ka] = refill_dead_components(factors[kb], factors[ka], gen)
        return factors

    def _aggregate(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> AggregationResult:
        p = data_weights(updates, self.params.weighting)
        if self.robust_rule is not None:
            factors = self._robust_factors(state, ctx, updates, *self.robust_rule)
        else:
            previous = state if self.params.rank_normalization else None
            weights = dict.fromkeys(ctx.model.modules, p)
            factors = zero_pad_aggregate(self, ctx, updates, weights, previous)
        heads = average_heads(ctx.model, updates, data_weights(updates))
        return self.publish(ctx, factors | heads, metrics={"num_updates": float(len(updates))})
