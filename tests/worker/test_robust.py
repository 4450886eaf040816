"""Robust aggregation (worker/strategies/robust.py): bounded weights, bounded update norms and
FedAvg's coordinate-wise rules, around every registered strategy."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from pydantic import ValidationError

from fedlora_client.protocol import STRATEGY_NAMES
from tests.worker.conftest import fake_updates, make_ctx, make_strategy
from worker.strategies import get_strategy
from worker.strategies.base import ClientUpdate
from worker.strategies.params import RobustAggregationParams
from worker.strategies.robust import bound_norms, capped_shares, change_norm, coordinatewise

OFF = {"max_client_weight_share": None, "norm_bound": "none"}


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(((a[k] - b[k]) ** 2).sum()) for k in a))


# ------------------------------------------------------------------------------- weights


def test_capped_shares_hand_computed() -> None:
    assert capped_shares([1e9, 10, 10], 0.5) == pytest.approx([0.5, 0.25, 0.25])
    # 0.6 is capped at 0.5; the other 0.5 goes 3:1 to the rest
    assert capped_shares([6, 3, 1], 0.5) == pytest.approx([0.5, 0.375, 0.125])
    # capping the first pushes the second over the cap too: both capped, the third gets 0.2
    assert capped_shares([50, 40, 10], 0.4) == pytest.approx([0.4, 0.4, 0.2])
    assert capped_shares([3, 1], None) == pytest.approx([0.75, 0.25])
    assert capped_shares([3, 1], 0.4) == pytest.approx([0.5, 0.5])  # below 1/K: uniform
    assert capped_shares([1, 1, 1, 1], 0.5) == pytest.approx([0.25] * 4)  # within: unchanged


def test_max_examples_bounds_a_claimed_weight() -> None:
    """An update claiming 1e9 examples counts as its membership's max_examples (10)."""
    ctx = make_ctx("fedavg", (8, 8, 8))
    bare = make_strategy(ctx, "fedavg")
    robust = get_strategy("fedavg", ctx.params, device="cpu", robust=OFF)
    state = bare.init_state(ctx)
    honest = fake_updates(bare.plan(state, ctx), [10, 10, 10])
    claimed = [*honest[:2], replace(honest[2], num_examples=10**9, max_examples=10)]
    got = robust.aggregate(state, ctx, claimed)
    want = bare.aggregate(state, ctx, honest)
    assert _distance(got.adapter, want.adapter) < 1e-6
    assert got.metrics["weights_capped_by_max_examples"] == 1.0
    unbounded = bare.aggregate(state, ctx, [*honest[:2], replace(honest[2], num_examples=10**9)])
    assert _distance(unbounded.adapter, want.adapter) > 0.01  # today: the claim wins


def test_weight_share_cap_limits_an_overweighted_client() -> None:
    ctx = make_ctx("fedavg", (8, 8, 8), params={"rank_normalization": False})
    bare = make_strategy(ctx, "fedavg")
    state = bare.init_state(ctx)
    ups = fake_updates(bare.plan(state, ctx), [10, 10, 10**9])
    robust = get_strategy(
        "fedavg", ctx.params, device="cpu", robust={**OFF, "max_client_weight_share": 0.5}
    )
    got = robust.aggregate(state, ctx, ups)
    assert got.metrics["max_update_share"] == pytest.approx(0.5)
    # zero-padded FedAvg at equal ranks is exactly the weighted mean of B: 0.25, 0.25, 0.5
    key = next(k for k in got.adapter if k.endswith("lora_B.weight"))
    want = 0.25 * ups[0].tensors[key] + 0.25 * ups[1].tensors[key] + 0.5 * ups[2].tensors[key]
    assert torch.allclose(got.adapter[key], want, atol=1e-6)


# ------------------------------------------------------------------------------- norms


def test_bound_norms_scales_only_what_is_over_the_bound() -> None:
    start = {"w": torch.zeros(4)}
    ups = [
        ClientUpdate("c0", None, {"w": torch.tensor([1.0, 0, 0, 0])}, 1),  # type: ignore[arg-type]
        ClientUpdate("c1", None, {"w": torch.tensor([0, 2.0, 0, 0])}, 1),  # type: ignore[arg-type]
        ClientUpdate("c2", None, {"w": torch.tensor([0, 0, 300.0, 0])}, 1),  # type: ignore[arg-type]
    ]
    params = RobustAggregationParams(norm_bound_multiple=3.0)
    out, bound, norms = bound_norms(ups, [start] * 3, params)
    assert norms == pytest.approx([1.0, 2.0, 300.0])
    assert bound == pytest.approx(6.0)  # 3 x the median (2)
    assert out[0] is ups[0]
    assert out[1] is ups[1]
    assert torch.allclose(out[2].tensors["w"], torch.tensor([0, 0, 6.0, 0]))
    # two clients: the lower median, so the large one cannot raise the bound by itself
    _, bound2, _ = bound_norms(ups[1:], [start] * 2, params)
    assert bound2 == pytest.approx(6.0)
    fixed = RobustAggregationParams(norm_bound="fixed", norm_bound_value=1.5)
    out, bound, _ = bound_norms(ups, [start] * 3, fixed)
    assert bound == 1.5
    assert [change_norm(u.tensors, start) for u in out] == pytest.approx([1.0, 1.5, 1.5])


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_honest_updates_are_left_unchanged_by_the_default_bound(strategy: str) -> None:
    ctx = make_ctx(strategy, (2, 4, 8, 8))
    bare = make_strategy(ctx, strategy)
    robust = get_strategy(
        strategy, ctx.params, device="cpu", robust={"max_client_weight_share": None}
    )
    state = bare.init_state(ctx)
    ups = fake_updates(bare.plan(state, ctx), [10, 20, 30, 40])
    got = robust.aggregate(state, ctx, ups)
    assert got.metrics["norm_bounded_updates"] == 0.0
    assert _distance(got.adapter, bare.aggregate(state, ctx, ups).adapter) == 0.0


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_a_scaled_up_update_is_bounded_for_every_strategy(strategy: str) -> None:
    """A client that returns its start plus 1000x an honest change: the default bound scales it
    to 5x the median change, so the aggregate stays near the honest-only one."""
    ctx = make_ctx(strategy, (8, 8, 8, 8))
    bare = make_strategy(ctx, strategy)
    robust = get_strategy(strategy, ctx.params, device="cpu", robust={})
    state = bare.init_state(ctx)
    plans = bare.plan(state, ctx)
    ups = fake_updates(plans, [10, 10, 10, 10])
    start = plans[ups[3].client_id].start
    poisoned = {k: start[k] + 1000.0 * (t - start[k]) for k, t in ups[3].tensors.items()}
    attacked = [*ups[:3], replace(ups[3], tensors=poisoned)]
    honest_ctx = replace(ctx, participants=ctx.participants[:3])
    honest = bare.aggregate(state, honest_ctx, ups[:3]).adapter
    defended = robust.aggregate(state, ctx, attacked)
    undefended = bare.aggregate(state, ctx, attacked).adapter
    assert defended.metrics["norm_bounded_updates"] == 1.0
    assert defended.metrics["norm_bound"] == pytest.approx(
        5.0 * sorted(change_norm(u.tensors, plans[u.client_id].start) for u in attacked)[1],
        rel=1e-6,
    )
    d_defended = _distance(defended.adapter, honest)
    d_undefended = _distance(undefended, honest)
    assert d_defended < 0.05 * d_undefended, (d_defended, d_undefended)


# ------------------------------------------------------------------------------- rules


def test_coordinatewise_median_and_trimmed_mean_ignore_missing_clients() -> None:
    nan = float("nan")
    stack = torch.tensor([[1.0, 1.0, nan], [2.0, 100.0, nan], [3.0, 2.0, 5.0], [1000.0, 3.0, nan]])
    assert torch.equal(coordinatewise(stack, "median", 0.0)[:2], torch.tensor([2.0, 2.0]))
    assert coordinatewise(stack, "median", 0.0)[2] == 5.0
    trimmed = coordinatewise(stack, "trimmed_mean", 0.2)  # 4 values: drop one at each end
    assert torch.allclose(trimmed, torch.tensor([2.5, 2.5, 5.0]))


def test_fedavg_median_rule_resists_a_hostile_minority() -> None:
    ctx = make_ctx("fedavg", (8, 8, 8, 8))
    bare = make_strategy(ctx, "fedavg")
    state = bare.init_state(ctx)
    plans = bare.plan(state, ctx)
    ups = fake_updates(plans, [10, 10, 10, 10])
    bad = {k: torch.full_like(t, 1e3) for k, t in ups[3].tensors.items()}
    attacked = [*ups[:3], replace(ups[3], tensors=bad)]
    robust = get_strategy("fedavg", ctx.params, device="cpu", robust={**OFF, "rule": "median"})
    got = robust.aggregate(state, ctx, attacked).adapter
    key = next(k for k in got if k.endswith("lora_A.weight"))
    honest = torch.stack([u.tensors[key] for u in ups[:3]])
    assert (got[key] >= honest.min(dim=0).values - 1e-6).all()
    assert (got[key] <= honest.max(dim=0).values + 1e-6).all()


def test_settings_refuse_bad_values_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match="norm_bound_value"):
        RobustAggregationParams(norm_bound="fixed")
    with pytest.raises(ValidationError, match="max_client_weight_share"):
        RobustAggregationParams(max_client_weight_share=0)
    with pytest.raises(ValueError, match="rule 'median' is defined for fedavg only"):
        get_strategy("flexlora", {}, robust={"rule": "median"})
