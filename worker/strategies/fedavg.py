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

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fedlora_client.protocol import lora_a_key, lora_b_key
from worker.linalg import check_rank_stack, padded_weighted_sum, work_dtype
from worker.strategies.adapters import generator
from worker.strategies.base import AggregationResult, ClientUpdate, PlanContext, ServerState
from worker.strategies.common import average_heads, data_weights, refill_dead_components
from worker.strategies.global_lora import GlobalLoRAStrategy
from worker.strategies.params import FedAvgParams

WeightFn = Callable[[ClientUpdate, Tensor, Tensor], float]
"""``(update, B_i, A_i) -> raw weight`` of a client in one module (normalised per module)."""


def zero_pad_aggregate(
    strategy: GlobalLoRAStrategy,
    ctx: PlanContext,
    updates: Sequence[ClientUpdate],
    weight: WeightFn,
) -> dict[str, Tensor]:
    """``B = sum_i w_i (s_i / s_g) pad(B_i)``, ``A = sum_i w_i pad(A_i)`` per module (on device).

    ``w_i = weight(u_i, B_i, A_i) / sum_k weight(u_k, B_k, A_k)`` within each module; a module
    whose raw weights are all zero falls back to data weights. One pass over each upload:
    the raw weight is taken and the factors are added while they are in cache (HetLoRA's
    norm weights read every factor; computing them in a separate pass read each one twice).
    """
    rank = strategy.state_rank(ctx)
    s_g = ctx.scaling(rank)
    dev = strategy.device
    out: dict[str, Tensor] = {}
    for module in sorted(ctx.model.modules):
        ka, kb = lora_a_key(module), lora_b_key(module)
        Bs = [u.tensors[kb].to(dev) for u in updates]
        As = [u.tensors[ka].to(dev) for u in updates]
        check_rank_stack(Bs, rank, -1, module)
        check_rank_stack(As, rank, -2, module)
        B = torch.zeros(Bs[0].shape[0], rank, dtype=work_dtype(*Bs), device=dev)
        A = torch.zeros(rank, As[0].shape[1], dtype=work_dtype(*As), device=dev)
        total = 0.0
        for u, b, a in zip(updates, Bs, As, strict=True):
            w = weight(u, b, a)
            if w > 0:
                r = b.shape[1]
                B[:, :r].add_(b, alpha=w * u.lora.scaling / s_g)
                A[:r].add_(a, alpha=w)
                total += w
        if total > 0:
            B.div_(total)
            A.div_(total)
        else:
            p = data_weights(updates)
            wb = [pi * u.lora.scaling / s_g for pi, u in zip(p, updates, strict=True)]
            B = padded_weighted_sum(Bs, wb, rank, rank_dim=-1)
            A = padded_weighted_sum(As, p, rank, rank_dim=-2)
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
        weights = data_weights(updates, self.params.weighting)
        p = {u.client_id: w for u, w in zip(updates, weights, strict=True)}
        factors = zero_pad_aggregate(self, ctx, updates, lambda u, _b, _a: p[u.client_id])
        heads = average_heads(ctx.model, updates, data_weights(updates))
        return self.publish(ctx, factors | heads, metrics={"num_updates": float(len(updates))})
