"""FLoRA, FlexLoRA and SDFLoRA against dense references of the weighted mean of products."""

from __future__ import annotations

import pytest
import torch

from fedlora_client.protocol import lora_a_key, lora_b_key
from tests.worker.conftest import DEVICES, fake_updates, make_ctx, make_strategy
from worker.strategies.base import ClientUpdate, PlanContext

BUDGETS = (2, 4, 8, 4)


def _effective_mean(ctx: PlanContext, updates: list[ClientUpdate], module: str) -> torch.Tensor:
    """``sum_i p_i s_i B_i A_i`` in float64, with data-size weights (independent reference)."""
    total = sum(u.num_examples for u in updates)
    return sum(
        (u.num_examples / total)
        * u.lora.scaling
        * u.tensors[lora_b_key(module)].double()
        @ u.tensors[lora_a_key(module)].double()
        for u in updates
    )


def _product(tensors: dict[str, torch.Tensor], module: str, scaling: float) -> torch.Tensor:
    return scaling * tensors[lora_b_key(module)].double() @ tensors[lora_a_key(module)].double()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _truncate(W: torch.Tensor, k: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return U[:, :k] * S[:k] @ Vh[:k]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_rslora", [False, True])
def test_flora_stacked_product_is_the_weighted_mean_of_effective_updates(
    device: str, use_rslora: bool
) -> None:
    budgets = (1, 2, 1, 2)  # two rounds stay below the lossless compression cap (16)
    ctx = make_ctx("flora", budgets, use_rslora=use_rslora)
    strategy = make_strategy(ctx, "flora", device)
    state = strategy.init_state(ctx)
    plans = strategy.plan(state, ctx)
    assert all(a.merge is None for a in plans.values())
    for a in plans.values():  # fresh LoRA: B zero, so the start update is zero
        assert all(not bool(a.start[lora_b_key(m)].any()) for m in ctx.model.modules)
    updates = fake_updates(plans)
    result = strategy.aggregate(state, ctx, updates)
    assert result.lora.rank == sum(budgets)
    assert result.lora.scaling == pytest.approx(1.0)
    for module in ctx.model.modules:
        got = _product(result.adapter, module, result.lora.scaling)
        assert _rel(got, _effective_mean(ctx, updates, module)) < 1e-6
    # round 2: the merge adapter is the cumulative stack; the new stack is appended
    ctx2 = make_ctx("flora", budgets, round_number=2, use_rslora=use_rslora)
    plans2 = strategy.plan(result.state, ctx2)
    first = next(iter(plans2.values()))
    assert first.merge is not None
    assert first.merge_lora is not None
    updates2 = fake_updates(plans2, seed=50)
    result2 = strategy.aggregate(result.state, ctx2, updates2)
    for module in ctx.model.modules:
        merged = _product(first.merge, module, first.merge_lora.scaling)
        expected = merged + _effective_mean(ctx2, updates2, module)
        assert _rel(_product(result2.adapter, module, result2.lora.scaling), expected) < 1e-6


def test_flora_compresses_losslessly_past_the_largest_possible_rank() -> None:
    ctx = make_ctx("flora", (8, 8, 8))  # R = 24 > cap = min(24, 16) = 16
    strategy = make_strategy(ctx, "flora")
    state = strategy.init_state(ctx)
    updates = fake_updates(strategy.plan(state, ctx))
    result = strategy.aggregate(state, ctx, updates)
    assert result.lora.rank == 16
    for module in ctx.model.modules:
        got = _product(result.adapter, module, result.lora.scaling)
        assert _rel(got, _effective_mean(ctx, updates, module)) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("split", ["b", "balanced"])
def test_flexlora_redistributes_the_truncated_svd_of_the_mean_product(
    device: str, split: str
) -> None:
    ctx = make_ctx("flexlora", BUDGETS, params={"sigma_split": split})
    strategy = make_strategy(ctx, "flexlora", device)
    state = strategy.init_state(ctx)
    updates = fake_updates(strategy.plan(state, ctx))
    result = strategy.aggregate(state, ctx, updates)
    s_g = ctx.scaling(ctx.global_rank)
    errors = []
    for module in ctx.model.modules:
        W = _effective_mean(ctx, updates, module)
        assert _rel(_product(result.adapter, module, s_g), _truncate(W, ctx.global_rank)) < 1e-5
        errors.append(float(torch.linalg.norm(W - _truncate(W, 8)) / torch.linalg.norm(W)))
    assert result.metrics["truncation_rel_error"] == pytest.approx(sum(errors) / 4, rel=1e-4)
    # next round: client i starts from the rank-r_i truncation, at its own scale
    ctx2 = make_ctx("flexlora", BUDGETS, round_number=2, params={"sigma_split": split})
    for p, a in zip(ctx2.participants, strategy.plan(result.state, ctx2).values(), strict=True):
        assert a.lora.rank == p.rank_budget
        for module in ctx.model.modules:
            W = _effective_mean(ctx, updates, module)
            got = _product(a.start, module, a.lora.scaling)
            assert _rel(got, _truncate(W, p.rank_budget)) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_sdflora_recompresses_the_stacked_shared_module(device: str) -> None:
    params = {"shared_rank": 6, "private_rank_fraction": 0.25}
    ctx = make_ctx("sdflora", BUDGETS, params=params)
    strategy = make_strategy(ctx, "sdflora", device)
    state = strategy.init_state(ctx)
    plans = strategy.plan(state, ctx)
    for p in ctx.participants:
        a = plans[p.client_id]
        private = a.private.lora.rank if a.private else 0
        assert a.lora.rank + private == p.rank_budget
        assert a.lora.rank <= 6
        assert a.client_dp
    updates = fake_updates(plans)
    result = strategy.aggregate(state, ctx, updates)
    s_rs = ctx.scaling(6)
    for module in ctx.model.modules:
        W = _effective_mean(ctx, updates, module)
        assert _rel(_product(result.adapter, module, s_rs), _truncate(W, 6)) < 1e-5
        B, A = result.adapter[lora_b_key(module)], result.adapter[lora_a_key(module)]
        # balanced split: the columns of B and rows of A carry equal norms
        torch.testing.assert_close(B.norm(dim=0), A.norm(dim=1), rtol=1e-4, atol=1e-6)
    # the next round's prefix is the top-r_i^s truncation at the client's scale
    ctx2 = make_ctx("sdflora", BUDGETS, round_number=2, params=params)
    for a in strategy.plan(result.state, ctx2).values():
        for module in ctx.model.modules:
            W = _effective_mean(ctx, updates, module)
            got = _product(a.start, module, a.lora.scaling)
            assert _rel(got, _truncate(W, a.lora.rank)) < 1e-5


def test_sdflora_server_variant_clips_updates_and_adds_noise_before_compression() -> None:
    base = {"shared_rank": 8, "private_rank": 1, "dp_variant": "server"}
    ctx = make_ctx("sdflora", BUDGETS, params=base | {"server_noise_multiplier": 0.0})
    strategy = make_strategy(ctx, "sdflora")
    state = strategy.init_state(ctx)
    plans = strategy.plan(state, ctx)
    assert not any(a.client_dp for a in plans.values())
    updates = fake_updates(plans)
    clip = 0.05
    ctx_clip = make_ctx(
        "sdflora", BUDGETS, params=base | {"server_noise_multiplier": 0.0, "server_clip_norm": clip}
    )
    result = make_strategy(ctx_clip, "sdflora").aggregate(state, ctx_clip, updates)
    total = sum(u.num_examples for u in updates)
    for module in ctx.model.modules:  # hand computation: start + c_i (final - start)
        expected = torch.zeros(ctx.model.modules[module], dtype=torch.float64)
        for u in updates:
            a = plans[u.client_id]
            sq = sum(
                float(
                    torch.linalg.norm(
                        _product(u.tensors, m, a.lora.scaling)
                        - _product(a.start, m, a.lora.scaling)
                    )
                )
                ** 2
                for m in ctx.model.modules
            )
            c = min(1.0, clip / sq**0.5)
            start = _product(a.start, module, a.lora.scaling)
            final = _product(u.tensors, module, a.lora.scaling)
            expected += u.num_examples / total * (start + c * (final - start))
        got = _product(result.adapter, module, ctx.scaling(8))
        assert _rel(got, _truncate(expected, 8)) < 1e-5
    noisy_ctx = make_ctx("sdflora", BUDGETS, params=base | {"server_noise_multiplier": 1.0})
    noisy = make_strategy(noisy_ctx, "sdflora").aggregate(state, noisy_ctx, updates)
    assert noisy.metrics["server_noise_std"] == pytest.approx(1.0 * 1.0 * 40 / 100)
    module = next(iter(ctx.model.modules))
    assert not torch.allclose(noisy.adapter[lora_b_key(module)], result.adapter[lora_b_key(module)])
