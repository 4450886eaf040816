"""Local training's levers: micro-batches, length grouping, logit adjustment, FedProx, and the
learning-rate schedule the server applies per round."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from fedlora_client import protocol as p
from fedlora_client._adapters import build_peft_model
from fedlora_client._data import encode_data
from fedlora_client._model import load_base_model, load_tokenizer
from fedlora_client._privacy import DPSGD, backward_quietly, secure_generator
from fedlora_client._training import (
    _fixed_batches,
    log_label_prior,
    micro_batches,
    per_example_loss,
    train_round,
)
from tests.client_sdk.conftest import cls_records, dp_plan, lora_tensors, method_task
from tests.client_sdk.fake_server import FakeServer


def _no_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def _train(
    minilm: Path,
    spec: p.ModelSpec,
    records: list[dict[str, object]],
    *,
    dp: p.DPMode = p.DPMode.NONE,
    steps: int = 3,
    batch_size: int = 8,
    **training: object,
) -> dict[str, torch.Tensor]:
    server = FakeServer()
    task = method_task(server, spec, p.TaskType.SEQ_CLS, "fedavg", steps=steps)
    update = {"batch_size": batch_size, "learning_rate": 0.01, **training}
    plan = task.plan.model_copy(
        update={
            "training": task.plan.training.model_copy(update=update),
            "dp": dp_plan(dp, noise_multiplier=0.0, recipe="manual")
            if dp is not p.DPMode.NONE
            else task.plan.dp,
        }
    )
    start = lora_tensors(spec, 4, seed=1, zero_b=False)
    base = _no_dropout(load_base_model(minilm, "seq_cls"))
    model = build_peft_model(base, plan, start)
    data = encode_data(records, "seq_cls", load_tokenizer(minilm), max_seq_len=32)
    return train_round(model, plan, data, progress=False, noise_seed=0).tensors


@pytest.mark.parametrize("dp", [p.DPMode.NONE, p.DPMode.SAMPLE])
def test_micro_batches_take_the_same_step_as_one_pass(
    dp: p.DPMode, minilm: Path, minilm_spec: p.ModelSpec
) -> None:
    records = cls_records(24)
    # plain SGD: Adam's normalisation would magnify float rounding on near-zero gradients
    whole = _train(minilm, minilm_spec, records, dp=dp, optimizer="sgd", learning_rate=0.05)
    parts = _train(minilm, minilm_spec, records, dp=dp, optimizer="sgd", learning_rate=0.05,
                   physical_batch_size=3)  # fmt: skip
    start = lora_tensors(minilm_spec, 4, seed=1, zero_b=False)
    for key in whole:
        assert not torch.equal(whole[key], start[key])  # it trained
        torch.testing.assert_close(parts[key], whole[key], rtol=1e-4, atol=1e-6)


def test_micro_batches_are_length_sorted_passes_of_at_most_the_size() -> None:
    lengths = [5, 1, 9, 3, 7, 2, 8]
    parts = micro_batches([0, 1, 2, 3, 4, 5, 6], lengths, 3)
    assert [len(x) for x in parts] == [3, 3, 1]
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(7))
    assert [lengths[i] for i in flat] == sorted(lengths)
    assert micro_batches([4, 2], lengths, None) == [[4, 2]]
    assert micro_batches([], lengths, 3) == []


def test_length_grouping_keeps_each_rounds_examples_and_cuts_padding() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(2, 60) for _ in range(200)]
    plain = _fixed_batches(200, 16, random.Random(5))
    grouped = _fixed_batches(200, 16, random.Random(5), lengths, group=10)
    plain_round = [next(plain) for _ in range(10)]
    grouped_round = [next(grouped) for _ in range(10)]
    assert sorted(i for b in plain_round for i in b) == sorted(i for b in grouped_round for i in b)
    assert all(len(b) == 16 for b in grouped_round)

    def padded(batches: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded(grouped_round) < 0.7 * padded(plain_round)


def test_log_label_prior_is_the_smoothed_local_label_share(
    minilm: Path,
) -> None:
    records = [{"text": f"x {i}", "label": int(i < 9)} for i in range(10)]  # 9 ones, 1 zero
    data = encode_data(records, "seq_cls", load_tokenizer(minilm), max_seq_len=16)
    prior = log_label_prior(data, 3)
    torch.testing.assert_close(prior.exp(), torch.tensor([2 / 13, 10 / 13, 1 / 13]))


def test_logit_adjustment_adds_the_log_prior_to_the_logits() -> None:
    class Fixed(nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
            return type("Out", (), {"logits": torch.tensor([[2.0, 0.0], [0.0, 1.0]])})()

    batch = {
        "input_ids": torch.zeros(2, 3, dtype=torch.long),
        "attention_mask": torch.ones(2, 3, dtype=torch.long),
        "labels": torch.tensor([0, 1]),
    }
    bias = torch.tensor([math.log(0.9), math.log(0.1)])
    got = per_example_loss(Fixed(), batch, p.TaskType.SEQ_CLS, bias)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]]) + bias
    expected = nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
    torch.testing.assert_close(got, expected)


def _margin_on(
    minilm: Path,
    tensors: dict[str, torch.Tensor],
    spec: p.ModelSpec,
    records: list[dict[str, object]],
) -> float:
    """Mean logit margin (class 1 - class 0) on ``records`` of the model ``tensors`` define."""
    server = FakeServer()
    plan = method_task(server, spec, p.TaskType.SEQ_CLS, "fedavg").plan
    model = build_peft_model(_no_dropout(load_base_model(minilm, "seq_cls")), plan, tensors)
    data = encode_data(records, "seq_cls", load_tokenizer(minilm), max_seq_len=32)
    batch = data.batch(list(range(len(data))))
    with torch.no_grad():
        out = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return float((out.logits[:, 1] - out.logits[:, 0]).mean())


def test_logit_adjustment_keeps_a_one_label_client_from_pulling_the_boundary(
    minilm: Path, minilm_spec: p.ModelSpec
) -> None:
    """A client holding only label 1: plain cross-entropy pushes every logit margin towards 1;
    with its (smoothed) prior added, the loss is already small and the boundary barely moves.
    (With SGD: AdamW's per-coordinate normalisation turns the small gradient into full-size
    steps, which is why the platform pairs logit adjustment with client SGD.)"""
    records = [{"text": f"a sentence number {i}", "label": 1} for i in range(32)]
    start = lora_tensors(minilm_spec, 4, seed=1, zero_b=False)
    before = _margin_on(minilm, start, minilm_spec, records)
    sgd = {"optimizer": "sgd", "learning_rate": 0.5}
    plain = _train(minilm, minilm_spec, records, steps=4, label_balance="none", **sgd)
    adjusted = _train(minilm, minilm_spec, records, steps=4, label_balance="logit_adjustment",
                      **sgd)  # fmt: skip
    moved_plain = _margin_on(minilm, plain, minilm_spec, records) - before
    moved_adjusted = _margin_on(minilm, adjusted, minilm_spec, records) - before
    assert moved_plain > 0.5
    assert abs(moved_adjusted) < 0.2 * moved_plain


def test_proximal_term_keeps_the_trained_tensors_near_their_start(
    minilm: Path, minilm_spec: p.ModelSpec
) -> None:
    records = cls_records(24)
    start = lora_tensors(minilm_spec, 4, seed=1, zero_b=False)

    def distance(tensors: dict[str, torch.Tensor]) -> float:
        return sum(float((tensors[k] - start[k]).norm()) ** 2 for k in tensors) ** 0.5

    free = _train(minilm, minilm_spec, records, steps=6, optimizer="sgd", learning_rate=0.05)
    held = _train(minilm, minilm_spec, records, steps=6, optimizer="sgd", learning_rate=0.05,
                  proximal_mu=10.0)  # fmt: skip
    assert distance(held) < 0.7 * distance(free)


def test_dp_clipping_bounds_one_examples_contribution_across_micro_batches() -> None:
    """Scaling one example's gradient up by 1,000 moves the DP-SGD gradient (before noise) by
    at most 2C / B, however the logical batch was split into passes."""
    from opacus import GradSampleModule

    torch.manual_seed(0)
    model = nn.Linear(6, 2)
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))

    def dp_grad(inputs: torch.Tensor, size: int) -> torch.Tensor:
        model.zero_grad()
        gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
        step = DPSGD(list(model.parameters()), [], clip_norm=0.5, noise_multiplier=0.0,
                     expected_batch_size=8.0, generator=secure_generator(0))  # fmt: skip
        for start in range(0, 8, size):
            out = gsm(inputs[start : start + size])
            loss = nn.functional.cross_entropy(out, y[start : start + size], reduction="none")
            backward_quietly(loss.sum())
            step.accumulate()
        step.apply(8)
        gsm._close()
        return torch.cat([q.grad.flatten() for q in model.parameters()])

    scaled = x.clone()
    scaled[5] *= 1000.0
    for size in (8, 3):
        change = float((dp_grad(scaled, size) - dp_grad(x, size)).norm())
        assert change <= 2 * 0.5 / 8 + 1e-6
    torch.testing.assert_close(dp_grad(x, 3), dp_grad(x, 8))


def test_cosine_schedule_warms_up_then_decays_to_its_floor() -> None:
    t = p.LocalTraining(learning_rate=1.0, lr_schedule="cosine", warmup_rounds=2)
    rates = [t.round_learning_rate(r, 10) for r in range(1, 11)]
    assert rates[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert rates[-1] == pytest.approx(p.COSINE_FLOOR)
    assert all(a >= b for a, b in itertools.pairwise(rates[2:]))
    flat = p.LocalTraining(learning_rate=0.3, lr_schedule="constant")
    assert {flat.round_learning_rate(r, 10) for r in range(1, 11)} == {0.3}
    single = p.LocalTraining(lr_schedule="cosine", learning_rate=5e-4)
    assert single.round_learning_rate(1, 1) == pytest.approx(5e-4)


def test_plans_carry_their_rounds_learning_rate() -> None:
    from tests.worker.conftest import make_ctx, make_strategy
    from worker.strategies.plans import encode_tensors, training_plan

    training = p.LocalTraining(learning_rate=0.01, lr_schedule="cosine")
    for number, expected in ((1, 0.01), (5, 0.001)):
        ctx = make_ctx("fedavg", round_number=number)  # 5 rounds in all
        strategy = make_strategy(ctx, "fedavg")
        assignment = next(iter(strategy.plan(strategy.init_state(ctx), ctx).values()))
        _, ref = encode_tensors(assignment.start, assignment.start_lora)
        plan = training_plan(
            assignment, ctx, strategy="fedavg", base_model_id="m", start=ref, merge=None,
            training=training, dp=p.DPSettings(mode=p.DPMode.NONE), seed=1,
        )  # fmt: skip
        assert plan.training.learning_rate == pytest.approx(expected)


def test_sdflora_private_module_is_clipped_with_the_shared_one_under_sample_dp(
    minilm: Path, minilm_spec: p.ModelSpec
) -> None:
    """Sample-level DP bounds every example's influence on the private module too (so the
    released shared module carries a formal guarantee): with a clipping norm of 1e-6 and no
    noise, one SGD step moves both together by at most lr * C * (Poisson batch / expected
    batch) <= 3 lr C here (24 examples, expected batch 8)."""
    from fedlora_client._adapters import PRIVATE, adapter_tensors

    server = FakeServer()
    task = method_task(server, minilm_spec, p.TaskType.SEQ_CLS, "sdflora", steps=3)
    training = task.plan.training.model_copy(
        update={"optimizer": "sgd", "learning_rate": 1.0, "batch_size": 8}
    )
    # one clipping norm for every group (the head's own default would dwarf 1e-6)
    dp = dp_plan(p.DPMode.SAMPLE, noise_multiplier=0.0, clip_norm=1e-6, head_clip_norm=None)
    plan = task.plan.model_copy(update={"training": training, "dp": dp})
    start = lora_tensors(minilm_spec, 4, seed=1, zero_b=False)
    model = build_peft_model(_no_dropout(load_base_model(minilm, "seq_cls")), plan, start)
    before = adapter_tensors(model, PRIVATE)
    data = encode_data(cls_records(24), "seq_cls", load_tokenizer(minilm), max_seq_len=32)
    result = train_round(model, plan, data, progress=False, noise_seed=0)
    assert result.private is not None
    moved = sum(float((result.private[k] - before[k]).norm()) ** 2 for k in before) ** 0.5
    shared = sum(float((result.tensors[k] - start[k]).norm()) ** 2 for k in result.tensors) ** 0.5
    bound = 3 * (24 / 8) * 1.0 * 1e-6  # steps * worst batch ratio * lr * C
    assert moved <= bound
    assert (shared**2 + moved**2) ** 0.5 <= bound  # jointly clipped: one budget for both
