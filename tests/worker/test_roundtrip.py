"""Every strategy: plan -> fake client updates -> aggregate -> plan, on small random shapes."""

from __future__ import annotations

import pytest
import torch

from fedlora_client.protocol import (
    PROTOCOL_VERSION,
    STRATEGY_NAMES,
    DPSettings,
    LocalTraining,
    TrainingPlan,
    lora_a_key,
    lora_b_key,
)
from tests.worker.conftest import DEVICES, fake_update, fake_updates, make_ctx, make_strategy
from worker.strategies import list_strategies
from worker.strategies.base import PlanContext, ServerState
from worker.strategies.plans import encode_tensors, training_plan

BUDGETS = (2, 4, 8, 4)


def _plan(assignment: object, ctx: PlanContext, name: str) -> TrainingPlan:
    from worker.strategies.base import ClientAssignment

    assert isinstance(assignment, ClientAssignment)
    _, start = encode_tensors(assignment.start, assignment.start_lora)
    merge = None
    if assignment.merge is not None and assignment.merge_lora is not None:
        _, merge = encode_tensors(assignment.merge, assignment.merge_lora)
    return training_plan(
        assignment,
        ctx,
        strategy=name,
        base_model_id="tiny",
        start=start,
        merge=merge,
        training=LocalTraining(),
        dp=DPSettings(noise_multiplier=1.0),
        seed=3,
    )


def test_registry_lists_every_protocol_strategy() -> None:
    assert [name for name, _ in list_strategies()] == list(STRATEGY_NAMES)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_round_trip(name: str, device: str, tmp_path: object) -> None:
    ctx = make_ctx(name, BUDGETS)
    strategy = make_strategy(ctx, name, device)
    state = strategy.init_state(ctx)
    for round_number in (1, 2, 3):
        ctx = make_ctx(name, BUDGETS, round_number=round_number)
        plans = strategy.plan(state, ctx)
        assert set(plans) == {p.client_id for p in ctx.participants}
        for p in ctx.participants:
            a = plans[p.client_id]
            plan = _plan(a, ctx, name)
            assert plan.protocol_version == PROTOCOL_VERSION
            # the start artifact holds exactly what the client uploads, at the plan's shapes
            assert {k: tuple(v.shape) for k, v in a.start.items()} == plan.upload_shapes()
            total = a.lora.rank + (a.private.lora.rank if a.private else 0)
            assert total == min(p.rank_budget, ctx.global_rank)
        updates = fake_updates(plans, seed=10 * round_number)
        result = strategy.aggregate(state, ctx, updates)
        for key, t in result.adapter.items():
            assert t.device.type == "cpu", key
            assert bool(torch.isfinite(t).all()), key
        for module, (d_out, d_in) in ctx.model.modules.items():
            assert result.adapter[lora_a_key(module)].shape == (result.lora.rank, d_in)
            assert result.adapter[lora_b_key(module)].shape == (d_out, result.lora.rank)
        files = result.state.to_files()
        state = ServerState.from_files(files)
        assert state.meta == result.state.meta
        assert all(torch.equal(state.tensors[k], result.state.tensors[k]) for k in state.tensors)
    assert strategy.plan(state, make_ctx(name, BUDGETS, round_number=4))


def test_state_save_load(tmp_path: object) -> None:
    from pathlib import Path

    ctx = make_ctx("fslora", BUDGETS, params={"server_optimizer": "adamw", "server_lr": 5e-4})
    strategy = make_strategy(ctx, "fslora")
    state = strategy.init_state(ctx)
    result = strategy.aggregate(state, ctx, fake_updates(strategy.plan(state, ctx)))
    result.state.save(Path(str(tmp_path)))
    loaded = ServerState.load(Path(str(tmp_path)))
    assert loaded.meta["step"] == 1
    assert any(k.startswith("opt.exp_avg_sq.") for k in loaded.tensors)
    assert sorted(p.name for p in Path(str(tmp_path)).iterdir()) == [
        "state.json",
        "state.safetensors",
    ]


@pytest.mark.parametrize("name", STRATEGY_NAMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_uploads_aggregate_in_float32(name: str, dtype: torch.dtype) -> None:
    ctx = make_ctx(name, BUDGETS)
    strategy = make_strategy(ctx, name)
    state = strategy.init_state(ctx)
    plans = strategy.plan(state, ctx)
    updates = [fake_update(a, 10 + i, seed=i, dtype=dtype) for i, a in enumerate(plans.values())]
    result = strategy.aggregate(state, ctx, updates)
    assert all(t.dtype == torch.float32 for t in result.adapter.values())
    assert all(bool(torch.isfinite(t).all()) for t in result.state.tensors.values())
