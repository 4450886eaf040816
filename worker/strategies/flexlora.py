"""FlexLoRA (docs/methods.md#flexlora): average of products, then SVD redistribution to each rank.

State: the global update ``W_bar`` truncated to the federation's global rank ``G``, stored as
factors at scale ``s_g = s(G)`` sorted by singular value (``sigma_split='b'``:
``B = U Sigma / s_g``, ``A = V^T``, as the paper's code; ``'balanced'``: Sigma^1/2 each side),
plus the head.

Round: client i gets the top-``r_i`` triplets (``r_i = min(budget, G)``):
``B_i = U[:, :r_i] Sigma[:r_i] / s_i`` and ``A_i = V[:, :r_i]^T`` ("put 1/s(r) back into B",
the reference code's ``merge_rate``); the prefix of the sorted state is exactly that.
The server forms ``W_bar = sum_i p_i s_i B_i A_i`` **factored**: it stacks ``Bc = [p_1 s_1 B_1,
...]``, ``Ac = [A_1; ...]``, runs two thin QRs and the top-G SVD of the ``R x R`` float64 core
(docs/methods.md#factored-svd; :func:`worker.linalg.factored_svd`), over layers of identical shape
in chunks. No ``m x d`` matrix is formed (the dense route is used only when ``R >= min(m, d)``,
where it costs the same).

Project decisions:

* The LoRA persists across rounds (nothing is merged into W0); the published adapter is the
  rank-G truncation of ``W_bar``. ``metrics['truncation_rel_error']`` reports the mean over
  layers of the discarded relative Frobenius energy.
* Rank components beyond ``rank(W_bar)`` (zero singular values) get a fresh A row with B zero.
* Averaging products dilutes what low-rank clients did not hold: in a round where every client
  returns its start unchanged, ``W_bar = sum_i p_i trunc_{r_i}(W)``, so each singular value
  ``sigma_j`` of the global update shrinks by the factor ``sum_{i: r_i > j} p_i``
  (``tests/worker/test_noop_rounds.py`` pins it). ``rank_normalization`` aggregates the
  clients' changes instead, ``W + sum_i p_i (s_i B_i A_i - trunc_{r_i}(W))``
  (:meth:`GlobalLoRAStrategy.change_blocks`); such a round is then a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedlora_client.protocol import lora_a_key, lora_b_key
from worker.linalg import factored_svd
from worker.strategies.adapters import generator
from worker.strategies.base import AggregationResult, ClientUpdate, PlanContext, ServerState
from worker.strategies.common import (
    average_heads,
    data_weights,
    refill_dead_components,
    shape_groups,
)
from worker.strategies.global_lora import GlobalLoRAStrategy
from worker.strategies.params import FlexLoRAParams


def stack_group(
    modules: list[str],
    factors: Sequence[tuple[float, dict[str, Tensor]]],
    device: torch.device,
    *,
    column_major: bool = True,
) -> tuple[Tensor, Tensor]:
    """Batched stacked factors of a shape group: ``Bc (L, m, R)``, ``Ac (L, R, d)``.

    ``factors`` holds ``(c_i, tensors_i)``; block i of ``Bc`` is ``c_i B_i`` and of ``Ac`` is
    ``A_i``. Filled in place: one copy of each factor, no intermediate stacks. ``Bc`` is a
    column-major view (the layout LAPACK's QR reads without another copy) unless
    ``column_major=False`` (FLoRA, which publishes the stack itself).
    """
    ranks = [t[lora_a_key(modules[0])].shape[0] for _, t in factors]
    d_out, _ = factors[0][1][lora_b_key(modules[0])].shape
    d_in = factors[0][1][lora_a_key(modules[0])].shape[1]
    R = sum(ranks)
    # Ac is row-major, so Ac^T is column-major for free.
    if column_major:
        Bc = torch.empty(len(modules), R, d_out, device=device).transpose(-1, -2)
    else:
        Bc = torch.empty(len(modules), d_out, R, device=device)
    Ac = torch.empty(len(modules), R, d_in, device=device)
    for layer, module in enumerate(modules):
        offset = 0
        for (c, tensors), r in zip(factors, ranks, strict=True):
            torch.mul(tensors[lora_b_key(module)], c, out=Bc[layer, :, offset : offset + r])
            Ac[layer, offset : offset + r, :].copy_(tensors[lora_a_key(module)])
            offset += r
    return Bc, Ac


CHUNK_BYTES = 1 << 30
"""Stacked factors of at most this many bytes are processed in one batched call."""


def layer_chunks(modules: list[str], shape: tuple[int, int], stacked_rank: int) -> list[list[str]]:
    """Split a shape group so that each batch's ``Bc`` + ``Ac`` stays under ``CHUNK_BYTES``."""
    per_layer = (shape[0] + shape[1]) * stacked_rank * 4
    size = max(1, CHUNK_BYTES // max(per_layer, 1))
    return [modules[i : i + size] for i in range(0, len(modules), size)]


class FlexLoRA(GlobalLoRAStrategy):
    """Average of products + factored SVD redistribution."""

    name = "flexlora"
    params_model = FlexLoRAParams
    params: FlexLoRAParams

    def _aggregate(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> AggregationResult:
        p = data_weights(updates, self.params.weighting)
        rank = self.state_rank(ctx)
        s_g = ctx.scaling(rank)
        out: dict[str, Tensor] = {}
        errors: list[float] = []
        if self.params.rank_normalization:
            stacked = self.change_blocks(state, ctx, updates, p)
        else:
            stacked = [(pi * u.lora.scaling, u.tensors) for pi, u in zip(p, updates, strict=True)]
        first = lora_a_key(next(iter(ctx.model.modules)))
        stacked_rank = sum(t[first].shape[0] for _, t in stacked)
        chunks = [
            chunk
            for shape, group in shape_groups(ctx.model).items()
            for chunk in layer_chunks(group, shape, stacked_rank)
        ]
        for modules in chunks:
            Bc, Ac = stack_group(modules, stacked, self.device)
            svd = factored_svd(Bc, Ac, rank)
            B, A = svd.factors(rank, s_g, self.params.sigma_split)
            errors.extend(svd.tail_ratio(rank).tolist())
            gen = generator(ctx.federation_id, ctx.seed, "refill", ctx.round_number, modules[0])
            B, A = refill_dead_components(B, A, gen)
            for layer, module in enumerate(modules):
                out[lora_b_key(module)] = B[layer]
                out[lora_a_key(module)] = A[layer]
        heads = average_heads(ctx.model, updates, data_weights(updates))
        metrics = {
            "num_updates": float(len(updates)),
            "truncation_rel_error": sum(errors) / len(errors),
        }
        return self.publish(ctx, out | heads, metrics=metrics)
