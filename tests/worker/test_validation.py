"""Bad uploads are rejected with named errors before any arithmetic; privates never travel."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from fedlora_client.protocol import (
    PEFT_PREFIX,
    STRATEGY_NAMES,
    DPMode,
    DPSettings,
    LocalTraining,
    LoraSpec,
    lora_a_key,
    lora_b_key,
)
from tests.worker.conftest import fake_updates, make_ctx, make_strategy
from worker.strategies import errors
from worker.strategies.base import (
    ClientAssignment,
    ClientUpdate,
    PlanContext,
    ServerState,
    Strategy,
)
from worker.strategies.plans import encode_tensors, training_plan

BUDGETS = (2, 4, 8)
MODULE = "layers.0.q_proj"


def _break_shape(u: ClientUpdate) -> None:
    u.tensors[lora_a_key(MODULE)] = torch.zeros(u.lora.rank, 17)


def _extra(u: ClientUpdate) -> None:
    u.tensors[PEFT_PREFIX + "layers.9.q_proj.lora_A.weight"] = torch.zeros(1, 1)


def _missing(u: ClientUpdate) -> None:
    del u.tensors[lora_b_key(MODULE)]


def _nan(u: ClientUpdate) -> None:
    u.tensors[lora_b_key(MODULE)][0, 0] = float("nan")


def _huge(u: ClientUpdate) -> None:
    """Finite values whose float32 sum overflows (#14): the API's rule refuses them too."""
    u.tensors[lora_b_key(MODULE)].fill_(3.0e37)


def _spec(u: ClientUpdate) -> None:
    u.lora = LoraSpec(rank=u.lora.rank, lora_alpha=u.lora.lora_alpha * 2)


def _client(u: ClientUpdate) -> None:
    u.client_id = "stranger"


def _examples(u: ClientUpdate) -> None:
    u.num_examples = 0


CASES: list[tuple[Callable[[ClientUpdate], None], type[errors.UpdateValidationError]]] = [
    (_break_shape, errors.ShapeMismatchError),
    (_extra, errors.UnexpectedTensorError),
    (_missing, errors.MissingTensorError),
    (_nan, errors.NonFiniteUpdateError),
    (_huge, errors.NonFiniteUpdateError),
    (_spec, errors.LoraSpecMismatchError),
    (_client, errors.UnknownClientError),
    (_examples, errors.UpdateValidationError),
]


@pytest.mark.parametrize("name", STRATEGY_NAMES)
@pytest.mark.parametrize(("corrupt", "error"), CASES)
def test_bad_update_raises_a_named_error_before_any_arithmetic(
    name: str,
    corrupt: Callable[[ClientUpdate], None],
    error: type[errors.UpdateValidationError],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = make_ctx(name, BUDGETS)
    strategy = make_strategy(ctx, name)
    state = strategy.init_state(ctx)
    updates = fake_updates(strategy.plan(state, ctx))
    corrupt(updates[-1])

    def no_arithmetic(*args: object) -> None:
        raise AssertionError("aggregation arithmetic ran before validation")

    monkeypatch.setattr(strategy, "_aggregate", no_arithmetic)
    with pytest.raises(error):
        strategy.aggregate(state, ctx, updates)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_duplicate_and_empty_uploads_are_rejected(name: str) -> None:
    ctx = make_ctx(name, BUDGETS)
    strategy = make_strategy(ctx, name)
    state = strategy.init_state(ctx)
    updates = fake_updates(strategy.plan(state, ctx))
    with pytest.raises(errors.DuplicateUpdateError):
        strategy.aggregate(state, ctx, [*updates, updates[0]])
    with pytest.raises(errors.NoUpdatesError):
        strategy.aggregate(state, ctx, [])


def test_a_state_of_another_model_is_rejected() -> None:
    ctx = make_ctx("flexlora", BUDGETS)
    strategy = make_strategy(ctx, "flexlora")
    state = strategy.init_state(make_ctx("flexlora", BUDGETS, global_rank=4))
    with pytest.raises(errors.StateMismatchError):
        strategy.plan(state, ctx)


def _sdflora_plans(
    variant: str = "local",
) -> tuple[PlanContext, Strategy, ServerState, dict[str, ClientAssignment]]:
    ctx = make_ctx("sdflora", BUDGETS, params={"private_rank": 1, "dp_variant": variant})
    strategy = make_strategy(ctx, "sdflora")
    state = strategy.init_state(ctx)
    return ctx, strategy, state, strategy.plan(state, ctx)


@pytest.mark.parametrize("variant", ["local", "server"])
def test_sdflora_private_modules_never_appear_in_an_upload_list(variant: str) -> None:
    ctx, _, _, plans = _sdflora_plans(variant)
    for a in plans.values():
        _, start = encode_tensors(a.start, a.start_lora)
        plan = training_plan(
            a,
            ctx,
            strategy="sdflora",
            base_model_id="tiny",
            start=start,
            merge=None,
            training=LocalTraining(),
            dp=DPSettings(noise_multiplier=1.0),
            seed=0,
        )
        assert plan.private is not None
        assert plan.private.lora.rank == 1
        shapes = plan.upload_shapes()
        assert not any("private" in key for key in shapes)
        # only the shared rank is uploaded: shared + private = budget, private excluded
        assert shapes[lora_a_key(MODULE)][0] == plan.lora.rank
        assert plan.lora.rank == a.lora.rank
        assert plan.dp.mode is (DPMode.SAMPLE if variant == "local" else DPMode.NONE)


def test_sdflora_rejects_an_upload_holding_private_tensors() -> None:
    ctx, strategy, state, plans = _sdflora_plans()
    updates = fake_updates(plans)
    updates[1].tensors[f"{PEFT_PREFIX}{MODULE}.lora_A.private.weight"] = torch.zeros(1, 16)
    with pytest.raises(errors.PrivateModuleUploadError, match="never be uploaded"):
        strategy.aggregate(state, ctx, updates)


def test_sdflora_rejects_private_factors_concatenated_into_the_shared_ones() -> None:
    ctx, strategy, state, plans = _sdflora_plans()
    updates = fake_updates(plans)
    u = updates[2]
    full = u.lora.rank + 1
    u.lora = LoraSpec(rank=full, lora_alpha=u.lora.lora_alpha)
    for module, (d_out, d_in) in ctx.model.modules.items():
        u.tensors[lora_a_key(module)] = torch.zeros(full, d_in)
        u.tensors[lora_b_key(module)] = torch.zeros(d_out, full)
    with pytest.raises(errors.LoraSpecMismatchError):
        strategy.aggregate(state, ctx, updates)
