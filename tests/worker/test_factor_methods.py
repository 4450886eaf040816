"""FSLoRA, PreLort, HetLoRA and FedAvg against hand computations written as plain loops."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from pydantic import ValidationError

from fedlora_client.protocol import TailPenalty, TrainingPlan, lora_a_key, lora_b_key
from tests.worker.conftest import DEVICES, fake_updates, make_ctx, make_strategy
from tests.worker.test_roundtrip import _plan
from worker.strategies.fslora import sketch_indices

BUDGETS = (2, 4, 8, 4)
HEAD_W = "base_model.model.classifier.weight"


def test_fslora_scaled_sketch_is_unbiased() -> None:
    ctx = make_ctx("fslora", (2,))
    r, k, draws = 8, 2, 10_000
    gen = torch.Generator().manual_seed(0)
    B, A = torch.randn(6, r, generator=gen, dtype=torch.float64), torch.randn(r, 5, generator=gen)
    A = A.double()
    total = torch.zeros(6, 5, dtype=torch.float64)
    counts = torch.zeros(r)
    for t in range(draws):
        idx = sketch_indices(dataclasses.replace(ctx, round_number=t), "c0", "m", r, k)
        assert len(set(idx)) == k  # without replacement
        total += (r / k) * B[:, idx] @ A[idx, :]
        counts[idx] += 1
    mean = total / draws
    assert float(torch.linalg.norm(mean - B @ A) / torch.linalg.norm(B @ A)) < 0.05
    torch.testing.assert_close(counts / draws, torch.full((r,), k / r), atol=0.02, rtol=0)


def test_fslora_client_reproduces_the_sketched_model() -> None:
    ctx = make_ctx("fslora", BUDGETS)
    strategy = make_strategy(ctx, "fslora")
    state = strategy.init_state(ctx)
    for key in list(state.tensors):  # non-zero B so the products are informative
        if key.endswith("lora_B.weight"):
            state.tensors[key] = torch.randn(state.tensors[key].shape)
    s, r = ctx.scaling(8), 8
    for p, a in zip(ctx.participants, strategy.plan(state, ctx).values(), strict=True):
        assert a.sketch is not None
        assert a.lora.rank == p.rank_budget
        assert a.lora.scaling == pytest.approx(s * r / p.rank_budget)
        for module, idx in a.sketch.indices.items():
            S = torch.zeros(r, r)
            S[idx, idx] = r / len(idx)
            B, A = state.tensors[lora_b_key(module)], state.tensors[lora_a_key(module)]
            ours = a.lora.scaling * a.start[lora_b_key(module)] @ a.start[lora_a_key(module)]
            torch.testing.assert_close(ours, s * B @ S @ A)
        a_idx = a.sketch.indices
        assert a_idx == strategy.sketch(ctx, p, a.lora.rank).indices  # deterministic


@pytest.mark.parametrize("device", DEVICES)
def test_fslora_sgd_aggregation_matches_a_hand_computation(device: str) -> None:
    params = {"server_optimizer": "sgd", "server_lr": 1.0, "weight_decay": 0.0}
    ctx = make_ctx("fslora", BUDGETS, params=params)
    strategy = make_strategy(ctx, "fslora", device)
    state = strategy.init_state(ctx)
    plans = strategy.plan(state, ctx)
    updates = fake_updates(plans)
    result = strategy.aggregate(state, ctx, updates)
    K = len(updates)
    for module in ctx.model.modules:
        kb, ka = lora_b_key(module), lora_a_key(module)
        B, A = state.tensors[kb].clone(), state.tensors[ka].clone()
        for u in updates:
            idx = plans[u.client_id].sketch.indices[module]  # type: ignore[union-attr]
            for pos, j in enumerate(idx):
                B[:, j] -= (state.tensors[kb][:, j] - u.tensors[kb][:, pos]) / K
                A[j, :] -= (state.tensors[ka][j, :] - u.tensors[ka][pos, :]) / K
        torch.testing.assert_close(result.adapter[kb], B)
        torch.testing.assert_close(result.adapter[ka], A)
    total = sum(u.num_examples for u in updates)
    head = sum(u.num_examples / total * u.tensors[HEAD_W] for u in updates)
    torch.testing.assert_close(result.adapter[HEAD_W], head)


@pytest.mark.parametrize("params", [{}, {"server_lr": 0.7, "weight_decay": 0.05}])
def test_fslora_fused_sgd_step_equals_torch_optim_sgd(params: dict[str, float]) -> None:
    """The default server step (plain SGD, fused with the scatter) against ``torch.optim.SGD``."""
    ctx = make_ctx("fslora", BUDGETS, params={"server_optimizer": "sgd", **params})
    strategy = make_strategy(ctx, "fslora")
    state = strategy.init_state(ctx)
    plans = strategy.plan(state, ctx)
    assert any(len(a.sketch.indices["layers.0.q_proj"]) == 8 for a in plans.values())  # type: ignore[union-attr]
    updates = fake_updates(plans)
    fused = strategy.aggregate(state, ctx, updates)
    reference = strategy._optimizer_step(state, ctx, updates, step=0)  # torch.optim.SGD
    assert fused.adapter.keys() == reference.adapter.keys()
    for key, value in reference.adapter.items():
        torch.testing.assert_close(fused.adapter[key], value)
    assert fused.state.meta["step"] == 1


def test_fslora_adamw_keeps_its_state_across_rounds() -> None:
    lr, wd, (b1, b2), eps = 0.01, 0.01, (0.9, 0.999), 1e-8
    params = {"server_optimizer": "adamw", "server_lr": lr}
    ctx = make_ctx("fslora", BUDGETS, params=params)
    strategy = make_strategy(ctx, "fslora")
    state = strategy.init_state(ctx)
    key = lora_b_key("layers.0.q_proj")
    p = state.tensors[key].clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t in (1, 2):
        ctx = make_ctx("fslora", BUDGETS, params=params, round_number=t)
        updates = fake_updates(strategy.plan(state, ctx), seed=t)
        g = strategy.pseudo_gradients(state, ctx, updates)[key]
        result = strategy.aggregate(state, ctx, updates)
        # hand AdamW step
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        torch.testing.assert_close(result.adapter[key], p)
        state = result.state
    assert state.meta["step"] == 2


@pytest.mark.parametrize("device", DEVICES)
def test_prelort_segment_average_is_the_mean_over_covering_clients(device: str) -> None:
    budgets = (2, 4, 4, 2)  # global rank 8: indices 4..7 are covered by nobody
    ctx = make_ctx("prelort", budgets)
    strategy = make_strategy(ctx, "prelort", device)
    state = strategy.init_state(ctx)
    plans = strategy.plan(state, ctx)
    s_g = ctx.scaling(8)
    for p, a in zip(ctx.participants, plans.values(), strict=True):
        assert a.lora.scaling == pytest.approx(s_g)  # rank-independent scale
        assert a.nested_truncations == sorted({2, p.rank_budget})
    updates = fake_updates(plans, sizes=[10, 20, 30, 40])
    result = strategy.aggregate(state, ctx, updates)
    for module in ctx.model.modules:
        kb, ka = lora_b_key(module), lora_a_key(module)
        for j in range(8):
            cover = [u for u in updates if u.lora.rank > j]
            if not cover:
                torch.testing.assert_close(result.adapter[kb][:, j], state.tensors[kb][:, j])
                torch.testing.assert_close(result.adapter[ka][j], state.tensors[ka][j])
                continue
            n = sum(u.num_examples for u in cover)
            col = sum(u.num_examples / n * u.tensors[kb][:, j] for u in cover)
            row = sum(u.num_examples / n * u.tensors[ka][j] for u in cover)
            torch.testing.assert_close(result.adapter[kb][:, j], col)
            torch.testing.assert_close(result.adapter[ka][j], row)


def test_prelort_truncation_policies() -> None:
    for policy, expected in [("powers_of_two", [1, 2, 4, 6]), ("rank_only", [6])]:
        ctx = make_ctx("prelort", (6,), params={"truncation_levels": policy})
        strategy = make_strategy(ctx, "prelort")
        plan = strategy.plan(strategy.init_state(ctx), ctx)["c0"]
        assert plan.nested_truncations == expected


@pytest.mark.parametrize("device", DEVICES)
def test_hetlora_matches_a_hand_computation(device: str) -> None:
    ctx = make_ctx("hetlora", BUDGETS, use_rslora=True)
    strategy = make_strategy(ctx, "hetlora", device)
    state = strategy.init_state(ctx)
    plans = strategy.plan(state, ctx)
    updates = fake_updates(plans)
    result = strategy.aggregate(state, ctx, updates)
    s_g = ctx.scaling(8)
    for module in ctx.model.modules:
        kb, ka = lora_b_key(module), lora_a_key(module)
        norms = [
            float(torch.linalg.norm(u.lora.scaling * u.tensors[kb] @ u.tensors[ka]))
            for u in updates
        ]
        w = [n / sum(norms) for n in norms]
        B = torch.zeros(ctx.model.modules[module][0], 8)
        A = torch.zeros(8, ctx.model.modules[module][1])
        for wi, u in zip(w, updates, strict=True):
            r = u.lora.rank
            B[:, :r] += wi * u.lora.scaling / s_g * u.tensors[kb]
            A[:r] += wi * u.tensors[ka]
        torch.testing.assert_close(result.adapter[kb], B)
        torch.testing.assert_close(result.adapter[ka], A)


def test_hetlora_start_is_the_truncation_at_the_client_scale() -> None:
    ctx = make_ctx("hetlora", BUDGETS)
    strategy = make_strategy(ctx, "hetlora")
    state = strategy.init_state(ctx)
    state = strategy.aggregate(state, ctx, fake_updates(strategy.plan(state, ctx))).state
    s_g = ctx.scaling(8)
    for p, a in zip(ctx.participants, strategy.plan(state, ctx).values(), strict=True):
        r = p.rank_budget
        for module in ctx.model.modules:
            kb, ka = lora_b_key(module), lora_a_key(module)
            expected = s_g * state.tensors[kb][:, :r] @ state.tensors[ka][:r]
            got = a.lora.scaling * a.start[kb] @ a.start[ka]
            torch.testing.assert_close(got, expected)


def test_hetlora_self_pruning_shrinks_a_rank_whose_tail_norm_decreased() -> None:
    params = {"self_pruning": True, "prune_gamma": 0.5}
    ctx = make_ctx("hetlora", (8,), params=params)
    strategy = make_strategy(ctx, "hetlora")
    state = strategy.init_state(ctx)
    for t, tail_scale in ((1, 1.0), (2, 0.5)):
        ctx = make_ctx("hetlora", (8,), params=params, round_number=t)
        update = fake_updates(strategy.plan(state, ctx), seed=t)[0]
        for module in ctx.model.modules:
            update.tensors[lora_b_key(module)][:, 4:] = tail_scale
            update.tensors[lora_a_key(module)][4:, :] = tail_scale
        state = strategy.aggregate(state, ctx, [update]).state
        assert strategy.plan(state, ctx)["c0"].lora.rank == (8 if t == 1 else 4)
    assert state.meta["ranks"] == {"c0": 4}


def test_hetlora_plans_carry_the_tail_penalty_only_with_self_pruning() -> None:
    params = {"self_pruning": True, "prune_gamma": 0.5, "prune_lambda": 0.01, "min_rank": 2}
    ctx = make_ctx("hetlora", (8, 2, 16), params=params)
    strategy = make_strategy(ctx, "hetlora")
    plans = strategy.plan(strategy.init_state(ctx), ctx)
    ranks = {cid: a.lora.rank for cid, a in plans.items()}
    penalties = {cid: a.tail_penalty for cid, a in plans.items()}
    for cid, rank in ranks.items():
        if rank > 2:  # keep = max(min_rank, floor(0.5 r)) < r
            assert penalties[cid] == TailPenalty(keep=max(2, rank // 2), weight=0.01)
        else:  # nothing left to prune: no regularizer
            assert penalties[cid] is None
    off = make_ctx("hetlora", (8, 2, 16), params={**params, "self_pruning": False})
    strategy = make_strategy(off, "hetlora")
    unpenalized = strategy.plan(strategy.init_state(off), off).values()
    assert all(a.tail_penalty is None for a in unpenalized)
    plan = _plan(plans["c0"], ctx, "hetlora")  # the TrainingPlan the client receives
    assert plan.tail_penalty == penalties["c0"]
    whole = {**plan.model_dump(), "tail_penalty": {"keep": plan.lora.rank, "weight": 0.01}}
    with pytest.raises(ValidationError, match=r"must be below lora\.rank"):
        TrainingPlan.model_validate(whole)  # a tail that starts past the rank prunes nothing


def test_fedavg_is_fedit_for_equal_ranks() -> None:
    ctx = make_ctx("fedavg", (8, 8, 8))
    strategy = make_strategy(ctx, "fedavg")
    state = strategy.init_state(ctx)
    updates = fake_updates(strategy.plan(state, ctx), sizes=[1, 2, 5])
    result = strategy.aggregate(state, ctx, updates)
    for key in updates[0].tensors:
        expected = sum(u.num_examples / 8 * u.tensors[key] for u in updates)
        torch.testing.assert_close(result.adapter[key], expected)
