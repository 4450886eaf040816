"""Helpers shared by the strategy modules: weights, initial state, heads, layer grouping."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from fedlora_client.protocol import ModelSpec, lora_a_key, lora_b_key
from worker.linalg import weighted_sum
from worker.strategies.adapters import generator, init_head, kaiming_uniform_a
from worker.strategies.base import ClientUpdate, PlanContext

__all__ = [
    "average_heads",
    "data_weights",
    "init_factors",
    "init_heads",
    "refill_dead_components",
    "shape_groups",
    "to_cpu",
]


def data_weights(updates: Sequence[ClientUpdate], weighting: str = "num_examples") -> list[float]:
    """``p_i = N_i / sum_j N_j`` (or ``1/K`` for ``uniform``). ``N_i`` is the update's bounded
    ``weight`` when the robust wrapper set one (worker/strategies/robust.py), else its
    ``num_examples``."""
    if weighting == "uniform":
        return [1.0 / len(updates)] * len(updates)
    raw = [float(u.num_examples) if u.weight is None else u.weight for u in updates]
    total = float(sum(raw))
    return [w / total for w in raw]


def shape_groups(model: ModelSpec) -> dict[tuple[int, int], list[str]]:
    """Adapted modules grouped by ``(d_out, d_in)``, each group in sorted module order."""
    groups: dict[tuple[int, int], list[str]] = {}
    for module in sorted(model.modules):
        d_out, d_in = model.modules[module]
        groups.setdefault((d_out, d_in), []).append(module)
    return groups


def init_factors(ctx: PlanContext, rank: int, *parts: object) -> dict[str, Tensor]:
    """Seeded LoRA factors at ``rank`` for every module: A Kaiming-uniform (PEFT), B zero.

    ``parts`` make the seed distinct per use (e.g. ``"init"`` or a client id and round).
    """
    out: dict[str, Tensor] = {}
    for module in sorted(ctx.model.modules):
        d_out, d_in = ctx.model.modules[module]
        gen = generator(ctx.federation_id, ctx.seed, "lora_A", module, *parts)
        out[lora_a_key(module)] = kaiming_uniform_a((rank, d_in), gen)
        out[lora_b_key(module)] = torch.zeros(d_out, rank)
    return out


def init_heads(ctx: PlanContext) -> dict[str, Tensor]:
    """Seeded ``extra_trainable`` tensors (the classifier head) as the model would init them."""
    return {
        key: init_head(key, tuple(shape), generator(ctx.federation_id, ctx.seed, "head", key))
        for key, shape in sorted(ctx.model.extra_trainable.items())
    }


def average_heads(
    model: ModelSpec, updates: Sequence[ClientUpdate], weights: Sequence[float]
) -> dict[str, Tensor]:
    """Data-weighted average of every ``extra_trainable`` tensor."""
    return {
        key: weighted_sum([u.tensors[key] for u in updates], weights).float()
        for key in sorted(model.extra_trainable)
    }


def refill_dead_components(B: Tensor, A: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Re-initialise rank components whose B column and A row are both exactly zero.

    A component with ``B[:, j] = 0`` and ``A[j, :] = 0`` gets no gradient ever again. Giving its A
    row a fresh Kaiming-uniform draw (B stays zero) leaves ``B @ A`` unchanged and makes it
    trainable. Works on single layers or batches ``(..., m, r)`` / ``(..., r, d)``.
    """
    zero_rows = (A == 0).all(dim=-1)  # (..., r); contiguous rows, cheap
    if not bool(zero_rows.any()):
        return B, A
    dead = zero_rows & (B == 0).all(dim=-2)
    if not bool(dead.any()):
        return B, A
    fresh = kaiming_uniform_a(tuple(A.shape), gen).to(device=A.device, dtype=A.dtype)
    return B, torch.where(dead.unsqueeze(-1), fresh, A)


def to_cpu(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous float32 CPU copies (what states, adapters and start artifacts hold)."""
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}


def factor_keys(modules: Iterable[str]) -> list[tuple[str, str, str]]:
    """``(module, A key, B key)`` for each module, sorted."""
    return [(m, lora_a_key(m), lora_b_key(m)) for m in sorted(modules)]
