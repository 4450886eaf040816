"""The DP preview is what the SDK will run: its schedule is local_schedule's, its sigma is
resolve_noise_multiplier's and reaches the target in dp-accounting itself, its parameter count
and noise-to-signal match hand computations, and it imports no torch."""

from __future__ import annotations

import math
import subprocess
import sys

import dp_accounting
import pytest
from dp_accounting import rdp

from fedlora_client import protocol as p
from fedlora_client._privacy import resolve_noise_multiplier
from fedlora_client.dp_preview import (
    DPPreviewError,
    dp_parameter_count,
    noise_multiplier,
    preview,
    preview_row,
)

# a MiniLM-sized model: two adapted 384 x 384 projections and a 2-class head
MODULES = {
    "bert.encoder.layer.0.attention.self.query": (384, 384),
    "bert.encoder.layer.0.attention.self.value": (384, 384),
}
HEAD = {"base_model.model.classifier.weight": [2, 384], "base_model.model.classifier.bias": [2]}


def _library_epsilon_sample(sigma: float, q: float, steps: int, delta: float) -> float:
    """dp-accounting directly: ``steps`` Poisson-subsampled Gaussian mechanisms."""
    accountant = rdp.RdpAccountant()
    step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(step, steps)
    return float(accountant.get_epsilon(delta))


def _library_epsilon_client(sigma: float, rounds: int, delta: float) -> float:
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(sigma), rounds)
    return float(accountant.get_epsilon(delta))


def test_dp_parameter_count_by_hand() -> None:
    # with A: per module B 384*8 + A 8*384 = 6144; the head 2*384 + 2 = 770
    assert dp_parameter_count(MODULES, HEAD, 8, freeze_a=False) == 2 * 6144 + 770
    # FFA-LoRA: B only
    assert dp_parameter_count(MODULES, HEAD, 8, freeze_a=True) == 2 * 3072 + 770
    # non-square: B is d_out x r, A is r x d_in
    assert dp_parameter_count({"m": (10, 3)}, {}, 2, freeze_a=False) == 10 * 2 + 2 * 3


def test_sample_level_recipe_rows_reach_the_target_in_dp_accounting() -> None:
    dp = p.DPSettings(mode=p.DPMode.SAMPLE, target_epsilon=8.0)
    training = p.LocalTraining()
    d, rows = preview(
        training=training,
        dp=dp,
        num_rounds=3,
        clients_per_round=4,
        rank=8,
        modules=MODULES,
        extra_trainable=HEAD,
        dataset_sizes=[300, 5120],
    )
    # the recipe freezes A: B and the head only
    assert d == 2 * 3072 + 770
    small, large = rows
    # a dataset under the recipe's smallest batch is taken whole; a larger one at N / 2
    assert (small.logical_batch, small.sampling_rate) == (300, 1.0)
    assert large.logical_batch == 2048
    assert large.sampling_rate == pytest.approx(0.4)
    assert small.steps_per_round == large.steps_per_round == p.DP_STEPS_PER_ROUND
    assert large.total_steps == p.DP_STEPS_PER_ROUND * 3
    for row in rows:
        library = _library_epsilon_sample(
            row.noise_multiplier, row.sampling_rate, row.total_steps, dp.delta
        )
        assert library == pytest.approx(8.0, abs=0.02)
        assert library <= 8.0 + 1e-6  # calibration never gives less privacy than asked
        assert row.epsilon == pytest.approx(library, rel=1e-9)
        # noise norm sigma C sqrt(d) over the signal's B C
        assert row.noise_to_signal == pytest.approx(
            row.noise_multiplier * math.sqrt(d) / row.logical_batch, rel=1e-12
        )
    # a smaller sampling rate is amplified more: less noise per step at the same epsilon
    assert large.noise_multiplier < small.noise_multiplier


def test_sigma_is_the_sdks_own() -> None:
    """The preview and the SDK resolve sigma by the same calibration over planned rounds."""
    for dp in (
        p.DPSettings(mode=p.DPMode.SAMPLE, target_epsilon=4.0),
        p.DPSettings(mode=p.DPMode.CLIENT, target_epsilon=4.0),
        p.DPSettings(mode=p.DPMode.SAMPLE, noise_multiplier=1.3),
    ):
        ours = noise_multiplier(dp, sampling_rate=0.1, steps=2, planned_rounds=5)
        plan = p.DPPlan(**dp.model_dump(), planned_rounds=5)
        assert ours == resolve_noise_multiplier(plan, sampling_rate=0.1, steps=2)


def test_manual_recipe_uses_the_training_batch_and_steps_and_trains_a() -> None:
    dp = p.DPSettings(mode=p.DPMode.SAMPLE, noise_multiplier=1.0, recipe="manual")
    training = p.LocalTraining(batch_size=16, steps=10)
    d, (row, tiny) = preview(
        training=training,
        dp=dp,
        num_rounds=4,
        clients_per_round=2,
        rank=4,
        modules=MODULES,
        dataset_sizes=[1600, 8],
    )
    assert d == 2 * (384 * 4 + 4 * 384)  # A is trained, no head
    assert (row.logical_batch, row.steps_per_round, row.total_steps) == (16, 10, 40)
    assert row.sampling_rate == pytest.approx(0.01)
    assert row.noise_multiplier == 1.0
    assert row.epsilon == pytest.approx(_library_epsilon_sample(1.0, 0.01, 40, dp.delta))
    assert row.noise_to_signal == pytest.approx(math.sqrt(d) / 16)
    # fewer examples than the batch: every example in every step, so the expected batch is N
    assert (tiny.logical_batch, tiny.sampling_rate) == (8, 1.0)
    assert tiny.noise_to_signal == pytest.approx(math.sqrt(d) / 8)


def test_client_level_noise_is_one_update_over_the_average_of_clients() -> None:
    dp = p.DPSettings(mode=p.DPMode.CLIENT, noise_multiplier=0.8, delta=1e-6)
    training = p.LocalTraining(batch_size=32, steps=5)
    d, (row,) = preview(
        training=training,
        dp=dp,
        num_rounds=20,
        clients_per_round=9,
        rank=8,
        modules=MODULES,
        extra_trainable=HEAD,
        dataset_sizes=[1000],
    )
    assert d == 2 * 6144 + 770  # client-level DP has no recipe: A is trained
    assert (row.logical_batch, row.steps_per_round) == (32, 5)
    assert row.epsilon == pytest.approx(_library_epsilon_client(0.8, 20, 1e-6), rel=1e-9)
    # 9 independent noises of norm sigma C sqrt(d) average to sigma C sqrt(d / 9); signal C
    assert row.noise_to_signal == pytest.approx(0.8 * math.sqrt(d) / 3)


def test_calibrated_client_level_sigma_reaches_the_target_over_the_rounds() -> None:
    dp = p.DPSettings(mode=p.DPMode.CLIENT, target_epsilon=6.0)
    row = preview_row(
        num_examples=100,
        training=p.LocalTraining(),
        dp=dp,
        num_rounds=10,
        clients_per_round=200,
        dp_parameters=None,
    )
    library = _library_epsilon_client(row.noise_multiplier, 10, dp.delta)
    assert library == pytest.approx(6.0, abs=0.02)
    assert row.noise_to_signal is None  # no model shapes, no ratio


def test_no_dp_and_no_noise() -> None:
    off = preview_row(
        num_examples=100,
        training=p.LocalTraining(),
        dp=p.DPSettings(mode="none"),
        num_rounds=3,
        clients_per_round=2,
        dp_parameters=1000,
    )
    assert (off.noise_multiplier, off.epsilon, off.noise_to_signal) == (0.0, None, 0.0)
    zero = preview_row(
        num_examples=100,
        training=p.LocalTraining(),
        dp=p.DPSettings(mode="client", noise_multiplier=0.0),
        num_rounds=3,
        clients_per_round=2,
        dp_parameters=1000,
    )
    assert zero.epsilon is None  # no noise: no finite guarantee


def test_an_unreachable_target_says_what_to_change() -> None:
    dp = p.DPSettings(mode=p.DPMode.CLIENT, target_epsilon=1e-6)
    with pytest.raises(DPPreviewError, match="reaches target_epsilon 1e-06"):
        preview_row(
            num_examples=100,
            training=p.LocalTraining(),
            dp=dp,
            num_rounds=100,
            clients_per_round=2,
            dp_parameters=None,
        )


def test_the_preview_imports_no_torch() -> None:
    code = "import sys, fedlora_client.dp_preview; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_recipe_batch_is_half_the_data_within_its_bounds() -> None:
    training, dp = p.LocalTraining(), p.DPSettings(mode=p.DPMode.SAMPLE, target_epsilon=8.0)
    cases = {54: 54, 512: 512, 1000: 512, 2544: 1272, 7076: 2048, 16384: 2048, 60614: 2048}
    for n, batch in cases.items():
        assert p.local_schedule(training, dp, n) == (batch, p.DP_STEPS_PER_ROUND), n


def test_recipe_batch_and_steps_can_be_overridden_and_the_preview_follows() -> None:
    dp = p.DPSettings(
        mode=p.DPMode.SAMPLE, target_epsilon=8.0, logical_batch=1024, steps_per_round=7
    )
    training = p.LocalTraining()
    assert p.local_schedule(training, dp, 5120) == (1024, 7)
    assert p.local_schedule(training, dp, 300) == (300, 7)  # a smaller dataset is taken whole
    # 'manual' ignores the recipe's knobs: the training's own batch and steps
    manual = dp.model_copy(update={"recipe": "manual"})
    assert p.local_schedule(training, manual, 5120) == (training.batch_size, training.steps)
    _, (row,) = preview(
        training=training,
        dp=dp,
        num_rounds=3,
        clients_per_round=4,
        rank=8,
        modules=MODULES,
        extra_trainable=HEAD,
        dataset_sizes=[5120],
    )
    assert (row.logical_batch, row.steps_per_round, row.total_steps) == (1024, 7, 21)
    library = _library_epsilon_sample(row.noise_multiplier, row.sampling_rate, 21, dp.delta)
    assert library == pytest.approx(8.0, abs=0.02)
    with pytest.raises(ValueError, match="steps_per_round"):
        p.DPSettings(mode=p.DPMode.SAMPLE, target_epsilon=8.0, steps_per_round=0)
