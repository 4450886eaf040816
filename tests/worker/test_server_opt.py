"""The server optimizer around a strategy: FedAvgM, FedAdam, FedYogi against hand computations."""

from __future__ import annotations

import pytest
import torch

from fedlora_client.protocol import lora_a_key, lora_b_key
from tests.worker.conftest import fake_updates, make_ctx
from worker.strategies import get_strategy
from worker.strategies.base import AggregationResult, PlanContext
from worker.strategies.params import ServerOptimizerParams, resolve_server_optimizer
from worker.strategies.server_opt import PREFIX, ServerOptimized

BUDGETS = (2, 4, 8, 4)


def _run(
    name: str, optimizer: dict[str, object] | None, rounds: int = 3
) -> list[AggregationResult]:
    """``rounds`` rounds of seeded fake updates; the same updates whatever the optimizer."""
    strategy = get_strategy(name, {}, device="cpu", server_optimizer=optimizer)
    ctx = make_ctx(name, BUDGETS)
    state = strategy.init_state(ctx)
    results = []
    for number in range(1, rounds + 1):
        ctx = make_ctx(name, BUDGETS, round_number=number)
        updates = fake_updates(strategy.plan(state, ctx), seed=10 * number)
        result = strategy.aggregate(state, ctx, updates)
        results.append(result)
        state = result.state
    return results


def _products(result: AggregationResult, ctx: PlanContext) -> dict[str, torch.Tensor]:
    s = result.lora.scaling
    out = {
        m: s * result.adapter[lora_b_key(m)].double() @ result.adapter[lora_a_key(m)].double()
        for m in ctx.model.modules
    }
    return out | {k: result.adapter[k].double() for k in ctx.model.extra_trainable}


@pytest.mark.parametrize("name", ["fedavg", "prelort", "flexlora", "sdflora"])
def test_momentum_zero_at_lr_one_is_the_strategy_itself(name: str) -> None:
    # FlexLoRA's and SDFLoRA's factors are an SVD's, equal as products only (signs may flip),
    # so their next plans, and fake updates added to them, differ: compare one round there
    rounds = 1 if name in ("flexlora", "sdflora") else 3
    plain = _run(name, None, rounds)
    wrapped = _run(name, {"name": "momentum", "momentum": 0.0, "lr": 1.0}, rounds)
    ctx = make_ctx(name, BUDGETS)
    for a, b in zip(plain, wrapped, strict=True):
        pa, pb = _products(a, ctx), _products(b, ctx)
        for key in pa:
            torch.testing.assert_close(pb[key], pa[key], rtol=1e-4, atol=1e-6)
    assert any(k.startswith(PREFIX) for k in wrapped[-1].state.tensors)
    assert not any(k.startswith(PREFIX) for k in wrapped[-1].adapter)  # never published


def _elementwise_reference(
    name: str, kind: str, hp: dict[str, float], rounds: int = 3
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """(published tensors with the optimizer, hand computation from the plain proposals).

    The plain strategy is re-run from each optimized state, so its proposal is exactly what the
    wrapper saw; the reference then applies the update rule by hand in float64."""
    opt = {"name": kind, **hp}
    wrapped = get_strategy(name, {}, device="cpu", server_optimizer=opt)
    plain = get_strategy(name, {}, device="cpu")
    ctx = make_ctx(name, BUDGETS)
    state = wrapped.init_state(ctx)
    m: dict[str, torch.Tensor] = {}
    v: dict[str, torch.Tensor] = {}
    got, want = [], []
    for number in range(1, rounds + 1):
        ctx = make_ctx(name, BUDGETS, round_number=number)
        updates = fake_updates(wrapped.plan(state, ctx), seed=10 * number)
        proposal = plain.aggregate(state, ctx, updates).adapter
        expected = {}
        for key, new in proposal.items():
            old = state.tensors[key].double()
            delta = new.double() - old
            beta1 = hp["momentum"]
            if kind == "momentum":
                m[key] = beta1 * m.get(key, torch.zeros_like(old)) + delta
                expected[key] = old + hp["lr"] * m[key]
                continue
            m[key] = beta1 * m.get(key, torch.zeros_like(old)) + (1 - beta1) * delta
            prev = v.get(key, torch.zeros_like(old))
            if kind == "adam":
                v[key] = hp["beta2"] * prev + (1 - hp["beta2"]) * delta**2
            else:
                v[key] = prev - (1 - hp["beta2"]) * delta**2 * torch.sign(prev - delta**2)
            m_hat = m[key] / (1 - beta1**number)
            v_hat = (v[key] / (1 - hp["beta2"] ** number)).clamp_min(0)
            expected[key] = old + hp["lr"] * m_hat / (v_hat.sqrt() + hp["tau"])
        result = wrapped.aggregate(state, ctx, updates)
        got.append(result.adapter)
        want.append(expected)
        state = result.state
    return got, want


@pytest.mark.parametrize("kind", ["momentum", "adam", "yogi"])
@pytest.mark.parametrize("name", ["fedavg", "hetlora", "prelort"])
def test_factor_space_optimizers_match_a_hand_computation(name: str, kind: str) -> None:
    hp = {"lr": 0.5 if kind == "momentum" else 0.01, "momentum": 0.8, "beta2": 0.9, "tau": 1e-2}
    got, want = _elementwise_reference(name, kind, hp)
    for g, w in zip(got, want, strict=True):
        for key in w:
            torch.testing.assert_close(g[key].double(), w[key], rtol=1e-4, atol=1e-6)


def test_flexlora_momentum_acts_on_the_product() -> None:
    """W_t = trunc_G(W_{t-1} + lr M_t), M_t = beta M_{t-1} + (proposal_t - W_{t-1}), by dense
    reference (the buffer's rank cap 2G holds everything in these small shapes)."""
    name, beta, lr = "flexlora", 0.7, 0.8
    opt = {"name": "momentum", "momentum": beta, "lr": lr}
    wrapped = get_strategy(name, {}, device="cpu", server_optimizer=opt)
    plain = get_strategy(name, {}, device="cpu")
    ctx = make_ctx(name, BUDGETS)
    state = wrapped.init_state(ctx)
    s_g = ctx.scaling(ctx.global_rank)
    M: dict[str, torch.Tensor] = {}
    for number in range(1, 4):
        ctx = make_ctx(name, BUDGETS, round_number=number)
        updates = fake_updates(wrapped.plan(state, ctx), seed=10 * number)
        proposal = plain.aggregate(state, ctx, updates).adapter
        result = wrapped.aggregate(state, ctx, updates)
        for module in ctx.model.modules:
            ka, kb = lora_a_key(module), lora_b_key(module)
            old = s_g * state.tensors[kb].double() @ state.tensors[ka].double()
            new = s_g * proposal[kb].double() @ proposal[ka].double()
            M[module] = beta * M.get(module, torch.zeros_like(old)) + (new - old)
            U, S, Vh = torch.linalg.svd(old + lr * M[module], full_matrices=False)
            expected = U[:, :8] * S[:8] @ Vh[:8]
            got = s_g * result.adapter[kb].double() @ result.adapter[ka].double()
            assert float((got - expected).norm() / expected.norm()) < 1e-4
        state = result.state


def test_server_optimizer_choices_are_checked_against_the_strategy() -> None:
    with pytest.raises(ValueError, match="element-wise moments"):
        resolve_server_optimizer("flexlora", {"name": "adam"})
    with pytest.raises(ValueError, match="merges its global update"):
        resolve_server_optimizer("flora", {"name": "momentum"})
    assert resolve_server_optimizer("flora", None).name == "none"
    assert resolve_server_optimizer("sdflora", {"name": "momentum"}).name == "momentum"
    assert resolve_server_optimizer("fslora", {"name": "yogi"}).name == "yogi"
    with pytest.raises(ValueError, match="merges"):
        ServerOptimized(get_strategy("flora", {}), ServerOptimizerParams(name="momentum"))


def test_flora_without_optimizer_is_not_wrapped() -> None:
    assert not isinstance(
        get_strategy("flora", {}, server_optimizer={"name": "none"}), ServerOptimized
    )
