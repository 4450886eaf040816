"""Robust aggregation around any strategy: bounded weights, bounded update norms, robust rules.

:class:`RobustAggregation` wraps a strategy (or a :class:`ServerOptimized` one); ``plan``
and validation are the strategy's own. Before the strategy aggregates, it

1. **bounds each weight**: ``w_i = min(num_examples_i, max_examples_i)`` (the membership's
   admin-set maximum, when there is one), then caps every share ``w_i / sum_j w_j`` at
   ``max_client_weight_share``, giving the excess to the others in proportion to their
   weights (:func:`capped_shares`). The strategies read the result through
   ``ClientUpdate.weight`` (:func:`worker.strategies.common.data_weights`);
2. **bounds each update's norm**: the change of an update is its uploaded tensors minus the
   start tensors its plan gave it (LoRA factors in the client's own parametrization, plus the
   head), the norm the Frobenius norm of all of them together. This is defined for every
   strategy, also those whose server never forms products (FSLoRA) or whose clients start
   from fresh factors (FLoRA); the change of the product ``s B A`` is not (it depends on the
   factorization the strategy then makes of it). A change above the bound is scaled down,
   ``start + (bound / norm) (upload - start)``; the bound is ``norm_bound_multiple`` x the
   round's lower median change norm (adaptive: the lower median, so with two clients one
   cannot raise the bound by itself) or ``norm_bound_value`` (fixed). A round whose median
   change is 0 is not bounded (there is no scale to compare with);
3. **FedAvg's rule** (``rule``): a coordinate-wise median or trimmed mean of the factors
   instead of the weighted mean (:func:`robust_factors`), each rank component over the
   clients that hold it.

The round's metrics record ``norm_bound``, ``norm_bounded_updates`` (how many were scaled
down), ``max_update_share`` and ``weights_capped_by_max_examples``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from fedlora_client.protocol import LoraSpec, lora_a_key, lora_b_key
from worker.strategies.base import (
    AggregationResult,
    ClientAssignment,
    ClientUpdate,
    Participant,
    PlanContext,
    ServerState,
    Strategy,
)
from worker.strategies.params import RobustAggregationParams

__all__ = [
    "RobustAggregation",
    "bound_norms",
    "capped_shares",
    "change_norm",
    "coordinatewise",
    "robust_factors",
]


def capped_shares(weights: Sequence[float], cap: float | None) -> list[float]:
    """Shares ``w_i / sum w`` with none above ``cap``: each share over it is set to ``cap`` and
    the rest of the mass is spread over the others in proportion to ``w`` (repeated until no
    share exceeds the cap). ``cap`` below ``1/K`` cannot be met: uniform shares."""
    k = len(weights)
    if k == 0:
        return []
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    total = float(sum(weights))
    shares = [w / total for w in weights]
    if cap is None or cap >= 1.0:
        return shares
    if cap * k <= 1.0 + 1e-12:
        return [1.0 / k] * k
    capped: set[int] = set()
    while True:
        over = [i for i in range(k) if i not in capped and shares[i] > cap * (1 + 1e-12)]
        if not over:
            return shares
        capped.update(over)
        free = [i for i in range(k) if i not in capped]
        rest = 1.0 - cap * len(capped)
        free_total = float(sum(weights[i] for i in free))
        for i in capped:
            shares[i] = cap
        for i in free:
            shares[i] = rest * weights[i] / free_total if free_total > 0 else rest / len(free)


def change_norm(tensors: dict[str, Tensor], start: dict[str, Tensor]) -> float:
    """Frobenius norm of ``tensors - start`` over every key of ``tensors`` (float64; a key the
    start lacks counts from zero)."""
    total = 0.0
    for key, t in tensors.items():
        s = start.get(key)
        diff = t.double() if s is None else t.double() - s.to(t.device).double()
        total += float(torch.sum(diff * diff))
    return math.sqrt(total)


def bound_norms(
    updates: Sequence[ClientUpdate],
    starts: Sequence[dict[str, Tensor]],
    params: RobustAggregationParams,
) -> tuple[list[ClientUpdate], float | None, list[float]]:
    """``(updates with each change scaled to the bound, the bound, the change norms)``.

    The bound is ``None`` when none applies (``norm_bound='none'``, or an adaptive bound over
    a round whose median change is 0); updates within it are returned unchanged (the same
    objects)."""
    norms = [change_norm(u.tensors, s) for u, s in zip(updates, starts, strict=True)]
    bound: float | None = None
    if params.norm_bound == "fixed":
        bound = params.norm_bound_value
    elif params.norm_bound == "adaptive" and norms:
        lower_median = sorted(norms)[(len(norms) - 1) // 2]
        bound = params.norm_bound_multiple * lower_median if lower_median > 0 else None
    if bound is None:
        return list(updates), None, norms
    out = []
    for u, start, norm in zip(updates, starts, norms, strict=True):
        if norm <= bound:
            out.append(u)
            continue
        factor = bound / norm
        tensors = {}
        for key, t in u.tensors.items():
            s = start.get(key)
            base = torch.zeros_like(t) if s is None else s.to(t.device, t.dtype)
            tensors[key] = base + (t - base) * factor
        out.append(replace(u, tensors=tensors))
    return out, bound, norms


def coordinatewise(stack: Tensor, rule: str, trim_fraction: float) -> Tensor:
    """Median or trimmed mean over dim 0 of ``stack``, ignoring NaN (a client that does not
    hold that coordinate); NaN where no client does."""
    if rule == "median":
        return torch.nanmedian(stack, dim=0).values
    if rule != "trimmed_mean":
        raise ValueError(f"unknown rule {rule!r}")
    valid = ~torch.isnan(stack)
    n = valid.sum(dim=0)  # clients holding each coordinate
    trim = torch.floor(n.double() * trim_fraction).long()
    if trim_fraction > 0:
        trim = torch.where(n >= 3, trim.clamp(min=1), trim)
    ordered, _ = torch.sort(torch.where(valid, stack, torch.inf), dim=0)  # missing ones last
    idx = torch.arange(stack.shape[0], device=stack.device).view(-1, *([1] * (stack.dim() - 1)))
    keep = (idx >= trim) & (idx < n - trim)
    kept = torch.where(keep, ordered, torch.zeros((), dtype=stack.dtype, device=stack.device))
    count = keep.sum(dim=0)
    return torch.where(count > 0, kept.sum(dim=0) / count.clamp(min=1), torch.nan)


def _padded(t: Tensor, rank: int, rank_dim: int) -> Tensor:
    shape = list(t.shape)
    shape[rank_dim] = rank
    out = torch.full(shape, torch.nan, dtype=torch.float32, device=t.device)
    index = [slice(None)] * t.dim()
    index[rank_dim] = slice(0, t.shape[rank_dim])
    out[tuple(index)] = t.float()
    return out


def robust_factors(
    ctx: PlanContext,
    updates: Sequence[ClientUpdate],
    previous: ServerState,
    rank: int,
    rule: str,
    trim_fraction: float,
    device: torch.device,
) -> dict[str, Tensor]:
    """FedAvg's factors by a coordinate-wise ``rule``: B columns (at the global scale) and A
    rows, each rank component over the clients that hold it; components nobody holds keep
    ``previous``'s value. Unweighted: a robust rule ignores the (claimed) data sizes."""
    s_g = ctx.scaling(rank)
    out: dict[str, Tensor] = {}
    for module in sorted(ctx.model.modules):
        ka, kb = lora_a_key(module), lora_b_key(module)
        bs = torch.stack(
            [_padded(u.tensors[kb].to(device) * (u.lora.scaling / s_g), rank, -1) for u in updates]
        )
        as_ = torch.stack([_padded(u.tensors[ka].to(device), rank, -2) for u in updates])
        for key, stack in ((kb, bs), (ka, as_)):
            combined = coordinatewise(stack, rule, trim_fraction)
            old = previous.tensors[key].to(device).float()
            out[key] = torch.where(torch.isnan(combined), old, combined)
    return out


class RobustAggregation(Strategy):
    """``inner`` with bounded weights and bounded update norms (and FedAvg's robust rule)."""

    def __init__(self, inner: Strategy, robust: RobustAggregationParams) -> None:
        base: Strategy = getattr(inner, "inner", inner)
        robust.check_strategy(base.name)
        self.inner = inner
        self.robust = robust
        self.name = inner.name  # type: ignore[misc]
        self.params_model = inner.params_model  # type: ignore[misc]
        self.params = inner.params
        self.device = inner.device
        if robust.rule != "mean":  # FedAvg reads it (worker/strategies/fedavg.py)
            base.robust_rule = (robust.rule, robust.trim_fraction)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ the strategy's own

    def init_state(self, ctx: PlanContext) -> ServerState:
        return self.inner.init_state(ctx)

    def plan(self, state: ServerState, ctx: PlanContext) -> dict[str, ClientAssignment]:
        return self.inner.plan(state, ctx)

    def client_lora(
        self, state: ServerState, ctx: PlanContext, participant: Participant
    ) -> LoraSpec:
        return self.inner.client_lora(state, ctx, participant)

    def expected_upload(
        self, state: ServerState, ctx: PlanContext, participant: Participant
    ) -> dict[str, tuple[int, ...]]:
        return self.inner.expected_upload(state, ctx, participant)

    def validate_updates(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> None:
        self.inner.validate_updates(state, ctx, updates)

    # ------------------------------------------------------------------ the defences

    def starts(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> list[dict[str, Tensor]]:
        """Each update's start tensors: the ones it carries (the worker loads them from the
        plan's start artifact), else the plan's (``plan`` is deterministic in (state, ctx))."""
        if all(u.start is not None for u in updates):
            return [u.start for u in updates if u.start is not None]
        planned = self.inner.plan(state, ctx)
        return [u.start if u.start is not None else planned[u.client_id].start for u in updates]

    def _aggregate(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> AggregationResult:
        r = self.robust
        weights = [
            float(u.num_examples if u.max_examples is None else min(u.num_examples, u.max_examples))
            for u in updates
        ]
        limited = sum(
            1 for u in updates if u.max_examples is not None and u.num_examples > u.max_examples
        )
        shares = capped_shares(weights, r.max_client_weight_share)
        weighted = [replace(u, weight=s) for u, s in zip(updates, shares, strict=True)]
        bounded, bound, norms = bound_norms(weighted, self.starts(state, ctx, updates), r)
        scaled = sum(1 for a, b in zip(weighted, bounded, strict=True) if a is not b)
        result = self.inner._aggregate(state, ctx, bounded)
        result.metrics = dict(result.metrics) | {
            "norm_bound": float("nan") if bound is None else float(bound),
            "norm_bounded_updates": float(scaled),
            "max_update_norm": max(norms, default=0.0),
            "max_update_share": max(shares, default=0.0),
            "weights_capped_by_max_examples": float(limited),
        }
        if bound is None:
            del result.metrics["norm_bound"]
        return result


def with_robust_aggregation(
    strategy: Strategy, robust: RobustAggregationParams | dict[str, object]
) -> RobustAggregation:
    """Wrap ``strategy`` in :class:`RobustAggregation` with validated settings."""
    params = (
        robust
        if isinstance(robust, RobustAggregationParams)
        else RobustAggregationParams.model_validate(robust)
    )
    return RobustAggregation(strategy, params)
