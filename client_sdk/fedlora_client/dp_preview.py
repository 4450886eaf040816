"""What a federation's DP settings will do, before it starts: batch, steps, sigma, epsilon and
the expected noise-to-signal ratio for organizations of a few sizes.

Torch-free (the server imports it): the schedule comes from the wire contract
(:func:`~fedlora_client.protocol.local_schedule`, :func:`~fedlora_client.protocol.freezes_lora_a`)
and the accounting from :mod:`fedlora_client._accounting`, the same two the SDK trains and
accounts with, so the preview is what an organization of that size will run. Sigma is
calibrated exactly as ``_privacy.resolve_noise_multiplier`` does (a test pins the two together).

Noise-to-signal (``noise_to_signal``), for ``d`` DP-trained parameters (:func:`dp_parameter_count`)
and noise multiplier ``sigma``:

* **sample-level**, one DP-SGD step of one organization: the clipped per-example gradients of
  an expected batch of ``B = q N`` examples sum to a vector of norm at most ``B C`` (all aligned),
  and the Gaussian noise added to the sum has norm about ``sigma C sqrt(d)``; the ratio is
  ``sigma sqrt(d) / B``. With grouped clipping (G groups each clipped to C, noise
  ``sigma C sqrt(G)``) both sides scale by ``sqrt(G)``, so the ratio is the same.
* **client-level**, the round's average of ``K = clients_per_round`` uploads: each update is
  clipped to ``C`` and its client adds noise of norm about ``sigma C sqrt(d)`` (one whole update's
  worth of noise, times ``sigma sqrt(d)``). The K noises are independent, so their average has
  norm ``sigma C sqrt(d / K)`` while the average of aligned updates has norm ``C``: the ratio is
  ``sigma sqrt(d / K)``, below 1 only with very many organizations per round.

A ratio above 1 means the noise is larger than the largest signal it can hide: a step (or a
round) points mostly in a random direction, and learning needs many of them to average out.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedlora_client._accounting import (
    calibrate_noise,
    client_level_event,
    epsilon_of,
    sample_level_event,
)
from fedlora_client.protocol import (
    DPMode,
    DPSettings,
    LocalTraining,
    freezes_lora_a,
    local_schedule,
)

DEFAULT_DATASET_SIZES: tuple[int, ...] = (500, 5_000, 50_000)
"""Organization sizes (examples) previewed when none are known."""


class DPPreviewError(ValueError):
    """The settings cannot be previewed (e.g. no sigma reaches the target epsilon)."""


@dataclass(frozen=True)
class DPPreviewRow:
    """The DP schedule and its outcome for one organization of ``num_examples`` examples."""

    num_examples: int
    logical_batch: int
    """Examples in one step: the expected size of a Poisson sample under sample-level DP."""
    steps_per_round: int
    sampling_rate: float
    """Fraction of the data in one step (the accountant's Poisson rate under sample-level DP)."""
    total_steps: int
    """``steps_per_round * num_rounds``: the steps of an organization in every round."""
    noise_multiplier: float
    """sigma (0 without DP)."""
    epsilon: float | None
    """Epsilon at delta after all rounds (RDP accountant); None: no finite guarantee."""
    noise_to_signal: float | None
    """See the module docstring; None when the model's shapes are not given."""


def dp_parameter_count(
    modules: Mapping[str, Sequence[int]],
    extra_trainable: Mapping[str, Sequence[int]],
    rank: int,
    *,
    freeze_a: bool,
) -> int:
    """Parameters that DP-SGD clips and noises (or that a client-level update holds): per adapted
    module of shape ``(d_out, d_in)``, B's ``d_out * r`` plus A's ``r * d_in`` unless A is frozen,
    plus every ``extra_trainable`` tensor (the classification head)."""
    total = 0
    for d_out, d_in in (tuple(shape) for shape in modules.values()):
        total += d_out * rank + (0 if freeze_a else rank * d_in)
    for shape in extra_trainable.values():
        total += math.prod(shape)
    return total


@functools.lru_cache(maxsize=512)
def _calibrated(mode: DPMode, target: float, delta: float, rate: float, steps: int) -> float:
    """sigma reaching ``target`` at ``delta`` over ``steps`` (sample) or rounds (client)."""
    try:
        if mode is DPMode.SAMPLE:
            return calibrate_noise(lambda s: sample_level_event(s, rate, steps), target, delta)
        return calibrate_noise(lambda s: client_level_event(s, steps), target, delta)
    except ValueError:
        raise DPPreviewError(
            f"no noise multiplier between 0.001 and 1000 reaches target_epsilon {target:g} at "
            f"delta {delta:g} over {steps} {'steps' if mode is DPMode.SAMPLE else 'rounds'}; "
            "choose a target epsilon between about 0.01 and 1000, or set noise_multiplier"
        ) from None


@functools.lru_cache(maxsize=512)
def _epsilon(mode: DPMode, sigma: float, delta: float, rate: float, steps: int) -> float:
    if mode is DPMode.SAMPLE:
        return epsilon_of([sample_level_event(sigma, rate, steps)], delta)
    return epsilon_of([client_level_event(sigma, steps)], delta)


def noise_multiplier(
    dp: DPSettings, *, sampling_rate: float, steps: int, planned_rounds: int
) -> float:
    """sigma as the SDK resolves it (``_privacy.resolve_noise_multiplier``): the settings' own,
    or calibrated so that ``planned_rounds`` rounds of ``steps`` steps reach the target."""
    if dp.mode is DPMode.NONE:
        return 0.0
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    assert dp.target_epsilon is not None  # DPSettings validates exactly one is set
    if dp.mode is DPMode.SAMPLE:
        return _calibrated(
            dp.mode, dp.target_epsilon, dp.delta, sampling_rate, steps * planned_rounds
        )
    return _calibrated(dp.mode, dp.target_epsilon, dp.delta, 1.0, planned_rounds)


def preview_row(
    *,
    num_examples: int,
    training: LocalTraining,
    dp: DPSettings,
    num_rounds: int,
    clients_per_round: int,
    dp_parameters: int | None,
) -> DPPreviewRow:
    """The schedule, sigma, epsilon and noise-to-signal of one organization of ``num_examples``
    examples taking part in all ``num_rounds`` rounds (the most any member can)."""
    if num_examples < 1:
        raise DPPreviewError(f"num_examples must be at least 1, not {num_examples}")
    rounds = max(1, num_rounds)
    batch, steps = local_schedule(training, dp, num_examples)
    rate = min(1.0, batch / num_examples)
    expected_batch = rate * num_examples  # what the SDK divides the noisy sum by
    sigma = noise_multiplier(dp, sampling_rate=rate, steps=steps, planned_rounds=rounds)
    epsilon: float | None = None
    ratio: float | None = None
    if dp.mode is DPMode.NONE:
        ratio = 0.0
    else:
        sample = dp.mode is DPMode.SAMPLE
        value = _epsilon(
            dp.mode, sigma, dp.delta, rate if sample else 1.0, steps * rounds if sample else rounds
        )
        epsilon = value if math.isfinite(value) else None
        if dp_parameters is not None:
            root_d = math.sqrt(dp_parameters)
            ratio = (
                sigma * root_d / expected_batch
                if sample
                else sigma * root_d / math.sqrt(max(1, clients_per_round))
            )
    return DPPreviewRow(
        num_examples=num_examples,
        logical_batch=round(expected_batch),
        steps_per_round=steps,
        sampling_rate=rate,
        total_steps=steps * rounds,
        noise_multiplier=sigma,
        epsilon=epsilon,
        noise_to_signal=ratio,
    )


def preview(
    *,
    training: LocalTraining,
    dp: DPSettings,
    num_rounds: int,
    clients_per_round: int,
    rank: int,
    modules: Mapping[str, Sequence[int]] | None = None,
    extra_trainable: Mapping[str, Sequence[int]] | None = None,
    dataset_sizes: Sequence[int] = DEFAULT_DATASET_SIZES,
) -> tuple[int | None, list[DPPreviewRow]]:
    """``(d, rows)``: the DP-trained parameter count at ``rank`` (None without ``modules``) and
    one :class:`DPPreviewRow` per dataset size, in the order given."""
    d = None
    if modules is not None:
        d = dp_parameter_count(
            modules, extra_trainable or {}, rank, freeze_a=freezes_lora_a(training, dp)
        )
    rows = [
        preview_row(
            num_examples=n,
            training=training,
            dp=dp,
            num_rounds=num_rounds,
            clients_per_round=clients_per_round,
            dp_parameters=d,
        )
        for n in dataset_sizes
    ]
    return d, rows
