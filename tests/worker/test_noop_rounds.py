"""Rounds in which every client returns exactly the adapter it was given.

Such a round carries no information, so the published global model should not move. It does
not for FLoRA, FSLoRA (without weight decay), SDFLoRA (which aggregates changes) and PreLort,
nor for FedAvg, HetLoRA and FlexLoRA with ``rank_normalization``. Without it, those three
move by an amount their definitions fix, pinned here: every rank component ``j`` is scaled by
the weight ``c_j = sum_{i: r_i > j} w_i`` of the clients that hold it (FlexLoRA: the singular
value; zero-padded factor averaging: each factor, so the product by ``c_j^2``).
"""

from __future__ import annotations

import pytest
import torch

from fedlora_client.protocol import lora_a_key, lora_b_key
from tests.worker.conftest import fake_updates, make_ctx, make_strategy
from worker.linalg import frobenius_norm_product
from worker.strategies.base import (
    AggregationResult,
    ClientAssignment,
    ClientUpdate,
    PlanContext,
    ServerState,
)

BUDGETS = (2, 4, 8, 4)
SIZES = (10, 20, 30, 40)
ROUNDS = 5


def _noop_updates(plans: dict[str, ClientAssignment]) -> list[ClientUpdate]:
    return [
        ClientUpdate(a.client_id, a.lora, {k: v.clone() for k, v in a.start.items()}, n)
        for a, n in zip(plans.values(), SIZES, strict=True)
    ]


def _products(result: AggregationResult, ctx: PlanContext) -> dict[str, torch.Tensor]:
    out = {m: _product(result.adapter, m, result.lora.scaling) for m in ctx.model.modules}
    return out | {key: result.adapter[key].double() for key in ctx.model.extra_trainable}


def _trained_start(name: str, params: dict[str, object]) -> ServerState:
    """A global state after one round of (fake) training: non-zero in every component."""
    ctx = make_ctx(name, BUDGETS, params=params)
    strategy = make_strategy(ctx, name)
    state = strategy.init_state(ctx)
    updates = fake_updates(strategy.plan(state, ctx), sizes=SIZES)
    return strategy.aggregate(state, ctx, updates).state


Products = dict[str, torch.Tensor]


def _noop_rounds(name: str, params: dict[str, object]) -> tuple[list[Products], ServerState]:
    """The products after each of ROUNDS no-op rounds, and the trained state they start from."""
    first = _trained_start(name, params)
    strategy, state, history = make_strategy(make_ctx(name, params=params), name), first, []
    for number in range(2, ROUNDS + 2):
        ctx = make_ctx(name, BUDGETS, params=params, round_number=number)
        result = strategy.aggregate(state, ctx, _noop_updates(strategy.plan(state, ctx)))
        history.append(_products(result, ctx))
        state = result.state
    return history, first


def _relative_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    num = sum(float(torch.linalg.norm(after[k] - before[k])) ** 2 for k in before)
    den = sum(float(torch.linalg.norm(before[k])) ** 2 for k in before)
    return (num / den) ** 0.5


def _product(tensors: dict[str, torch.Tensor], module: str, scaling: float) -> torch.Tensor:
    return scaling * tensors[lora_b_key(module)].double() @ tensors[lora_a_key(module)].double()


def _state_products(name: str, params: dict[str, object], state: ServerState) -> Products:
    """The global model a state publishes: its effective updates and heads."""
    ctx = make_ctx(name, BUDGETS, params=params, round_number=2)
    # FLoRA's state is its cumulative stack at scale 1; the others hold rank G at s(G)
    scaling = 1.0 if name == "flora" else ctx.scaling(ctx.global_rank)
    out = {m: _product(state.tensors, m, scaling) for m in ctx.model.modules}
    return out | {key: state.tensors[key].double() for key in ctx.model.extra_trainable}


NOOP = [
    ("fedavg", {"rank_normalization": True}),
    ("hetlora", {"rank_normalization": True}),
    ("flexlora", {"rank_normalization": True}),
    ("flora", {}),
    ("fslora", {}),
    ("sdflora", {}),
    ("prelort", {}),
]


@pytest.mark.parametrize(("name", "params"), NOOP, ids=[n for n, _ in NOOP])
def test_a_round_of_unchanged_clients_leaves_the_global_model_unchanged(
    name: str, params: dict[str, object]
) -> None:
    history, first = _noop_rounds(name, params)
    before = _state_products(name, params, first)
    for after in history:
        assert _relative_change(before, after) < 1e-5


def test_fedavg_homogeneous_ranks_is_a_noop_without_normalization() -> None:
    ctx = make_ctx("fedavg", (8, 8, 8, 8))
    strategy = make_strategy(ctx, "fedavg")
    state = strategy.init_state(ctx)
    state = strategy.aggregate(state, ctx, fake_updates(strategy.plan(state, ctx), SIZES)).state
    result = strategy.aggregate(state, ctx, _noop_updates(strategy.plan(state, ctx)))
    before = {m: _product(state.tensors, m, ctx.scaling(8)) for m in ctx.model.modules}
    after = _products(result, ctx)
    assert _relative_change(before, {m: after[m] for m in before}) < 1e-6


def _cover(weights: list[float]) -> torch.Tensor:
    """``c_j = sum_{i: r_i > j} w_i`` over the global rank 8."""
    c = torch.zeros(8, dtype=torch.float64)
    for w, r in zip(weights, BUDGETS, strict=True):
        c[:r] += w
    return c


def _scaled_components(
    state: ServerState, module: str, scaling: float, factor: torch.Tensor
) -> torch.Tensor:
    B, A = state.tensors[lora_b_key(module)].double(), state.tensors[lora_a_key(module)].double()
    return scaling * (B * factor) @ A


def test_zero_padded_fedavg_scales_component_j_by_the_square_of_its_cover() -> None:
    history, first = _noop_rounds("fedavg", {"rank_normalization": False})
    ctx = make_ctx("fedavg", BUDGETS, round_number=2)
    c = _cover([n / sum(SIZES) for n in SIZES])
    for module in ctx.model.modules:
        expected = _scaled_components(first, module, ctx.scaling(8), c**2)
        torch.testing.assert_close(history[0][module], expected, rtol=1e-5, atol=1e-7)
    # after 5 such rounds the product has lost a documented share of its norm
    before = _state_products("fedavg", {"rank_normalization": False}, first)
    assert _relative_change(before, history[-1]) > 0.1


def test_hetlora_scales_component_j_by_the_square_of_its_norm_weighted_cover() -> None:
    history, first = _noop_rounds("hetlora", {})
    ctx = make_ctx("hetlora", BUDGETS, round_number=2)
    s_g = ctx.scaling(8)
    for module in ctx.model.modules:
        B, A = first.tensors[lora_b_key(module)], first.tensors[lora_a_key(module)]
        norms = [s_g * float(frobenius_norm_product(B[:, :r], A[:r])) for r in BUDGETS]
        c = _cover([n / sum(norms) for n in norms])
        expected = _scaled_components(first, module, s_g, c**2)
        torch.testing.assert_close(history[0][module], expected, rtol=1e-5, atol=1e-7)


def test_flexlora_scales_singular_value_j_by_its_cover() -> None:
    history, first = _noop_rounds("flexlora", {})
    ctx = make_ctx("flexlora", BUDGETS, round_number=2)
    c = _cover([n / sum(SIZES) for n in SIZES])
    for module in ctx.model.modules:
        # the state is the SVD of the global update, sorted: the start of client i is its prefix
        expected = _scaled_components(first, module, ctx.scaling(8), c)
        torch.testing.assert_close(history[0][module], expected, rtol=1e-5, atol=1e-6)


def test_fslora_weight_decay_shrinks_the_global_model_only_when_set() -> None:
    params = {"weight_decay": 0.01}
    history, first = _noop_rounds("fslora", params)
    before = _state_products("fslora", params, first)
    ctx = make_ctx("fslora", BUDGETS, round_number=2)
    for module in ctx.model.modules:  # B and A each shrink by (1 - lr wd) per round
        shrunk = before[module] * 0.99**2
        torch.testing.assert_close(history[0][module], shrunk, rtol=1e-5, atol=1e-7)
