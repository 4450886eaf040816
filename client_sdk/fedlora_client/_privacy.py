"""Differential privacy, applied on the client before anything leaves the machine.

Guarantees (each an (epsilon, delta)-DP statement about the tensors the client uploads, with
delta = ``plan.dp.delta``; epsilon from :mod:`fedlora_client._accounting`):

**Sample-level** (``DPMode.SAMPLE``, the default). DP-SGD: every local step draws a Poisson
sample of the local dataset (rate ``q = batch_size / N``), computes per-example gradients of the
released parameters (``_dp_grads.LinearGradSampler``), clips each example's gradient, jointly over
all released tensors, to L2 norm ``C``, sums, adds ``N(0, sigma^2 C^2)`` to every coordinate and
divides by the expected batch size ``q N``. Neighbouring datasets differ by adding or removing
one record (one line of the local data). Covered: everything released over all rounds this
client takes part in (the final factors are post-processing of the noisy steps), given that the
start adapters come from the server independently of this client's unreleased data. Not covered:
the number of examples and the metrics reported to the server (``num_examples``, ``train_loss``
are sent in the clear: keep them out of a threat model that needs them private), and
correlations between records (a person with many records is protected per record only).

**Client-level** (``DPMode.CLIENT``). After local training the update ``final - start`` of all
released tensors together is clipped to L2 norm ``C`` and ``N(0, sigma^2 C^2)`` is added to each
coordinate. Neighbouring datasets differ by adding or removing this client's entire dataset.
Each round is a Gaussian mechanism of sensitivity ``C``; rounds compose. No amplification by
the server's client sampling is counted, and the guarantee is meaningful only when the noise is
small relative to the aggregate, i.e. with many clients. Metrics are not covered.

**SDFLoRA** (shared + private modules). Only the shared module is released; the private
module stays on the machine. In sample-level mode both are trained by the same DP-SGD steps:
every example's gradient is clipped jointly over the shared *and* private tensors and noise is
added to both, so the whole local state (and so every released shared module) is a
post-processing of the noisy, clipped steps and the accountant's epsilon is a formal
sample-level guarantee. (Training the private module without noise, as the method's released
code does, would let it carry unbounded information about the records into the shared
module's gradients.) In client-level mode only the uploaded shared update is clipped and
noised, which covers the release as before.

**Randomness.** Noise and DP sampling use a generator seeded from the operating system's
entropy, never from the plan's seed (the server knows the plan seed and could subtract noise
drawn from it). Tests and benchmarks may pass an explicit seed; that voids the guarantee.
``DPMode.NONE`` promises nothing.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Mapping, Sequence

import torch

from fedlora_client._accounting import (
    AccountantName,
    calibrate_noise,
    client_level_event,
    sample_level_event,
)
from fedlora_client._errors import NonFiniteUpdateError, PrivacyError
from fedlora_client.protocol import MAX_ABS_VALUE, DPMode, DPPlan

Tensors = Mapping[str, torch.Tensor]


def secure_generator(seed: int | None = None) -> torch.Generator:
    """A CPU generator from OS entropy (or from ``seed``, for tests: no privacy then)."""
    generator = torch.Generator()
    generator.manual_seed(secrets.randbits(63) if seed is None else seed)
    return generator


def joint_norm(tensors: Tensors) -> float:
    """L2 norm of all tensors together, in float64."""
    total = sum((t.detach().double().pow(2).sum() for t in tensors.values()), torch.zeros(()))
    return float(total.sqrt())


def ensure_finite(tensors: Tensors) -> None:
    """Raise :class:`NonFiniteUpdateError` if any value is NaN or infinite."""
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise NonFiniteUpdateError(
                f"update tensor {name!r} holds NaN or infinity; nothing was uploaded. Lower the "
                "learning rate or check the data, then retry the round."
            )


def ensure_uploadable(tensors: Tensors) -> None:
    """Raise :class:`NonFiniteUpdateError` unless every value is finite with magnitude below
    ``MAX_ABS_VALUE``, the server's rule for uploads (checked before anything is sent)."""
    ensure_finite(tensors)
    for name, tensor in tensors.items():
        if tensor.numel() and not bool(tensor.detach().abs().amax() < MAX_ABS_VALUE):
            raise NonFiniteUpdateError(
                f"update tensor {name!r} holds a value of magnitude {MAX_ABS_VALUE:g} or more, "
                "which the server refuses (training diverged); nothing was uploaded. Lower the "
                "learning rate or check the data, then retry the round."
            )


def clip_update(update: Tensors, clip_norm: float) -> dict[str, torch.Tensor]:
    """Scale ``update`` so its joint L2 norm is at most ``clip_norm``.

    Raises :class:`NonFiniteUpdateError` if any value is NaN or infinite (such an update is
    never uploaded: clipping cannot bound it meaningfully).
    """
    ensure_finite(update)
    norm = joint_norm(update)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {name: (t.double() * factor).to(t.dtype) for name, t in update.items()}


def add_gaussian_noise(
    tensors: Tensors, std: float, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """``tensors`` plus independent ``N(0, std^2)`` noise on every coordinate."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64) * std
        out[name] = (tensor.double().cpu() + noise).to(tensor.dtype).to(tensor.device)
    return out


def privatize_update(
    start: Tensors,
    final: Tensors,
    *,
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Client-level DP: ``start + clip(final - start, C) + N(0, sigma^2 C^2)``."""
    if set(start) != set(final):
        raise PrivacyError("start and final tensors differ in names; cannot form the update")
    delta = {k: final[k].detach().float().cpu() - start[k].detach().float().cpu() for k in final}
    noisy = add_gaussian_noise(
        clip_update(delta, clip_norm), noise_multiplier * clip_norm, generator
    )
    return {k: start[k].detach().float().cpu() + noisy[k] for k in final}


def resolve_noise_multiplier(
    dp: DPPlan, *, sampling_rate: float, steps: int, accountant: AccountantName = "rdp"
) -> float:
    """sigma from the plan, or calibrated so the planned rounds reach ``dp.target_epsilon``."""
    if dp.mode is DPMode.NONE:
        return 0.0
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    assert dp.target_epsilon is not None  # DPSettings validates exactly one is set
    rounds = dp.planned_rounds
    if dp.mode is DPMode.SAMPLE:
        return calibrate_noise(
            lambda s: sample_level_event(s, sampling_rate, steps * rounds),
            dp.target_epsilon,
            dp.delta,
            accountant,
        )
    return calibrate_noise(
        lambda s: client_level_event(s, rounds), dp.target_epsilon, dp.delta, accountant
    )


def _gs(p: torch.nn.Parameter) -> torch.Tensor | None:
    """The per-example gradient of ``p`` (leading batch dimension) left by the last backward
    pass (``_dp_grads.LinearGradSampler`` or Opacus' ``GradSampleModule``), if any."""
    sample: torch.Tensor | None = getattr(p, "grad_sample", None)
    return sample


class DPSGD:
    """Turns per-example gradients into DP-SGD gradients for the released parameters.

    After each forward/backward pass of ``sum(per_example_losses)`` with per-example gradients
    recorded (``param.grad_sample``, by ``_dp_grads.LinearGradSampler`` or an Opacus
    ``GradSampleModule``; one pass per micro-batch of a step's logical batch), :meth:`accumulate`
    clips every example's gradient (jointly over the released parameters) to ``C`` and adds it
    to a running sum. :meth:`apply` then sets released parameters' ``.grad`` to
    ``(sum_i clip_C(g_i) + N(0, sigma^2 C^2)) / expected_batch``: one Gaussian draw per
    logical batch, however it was split. With ``groups`` (one index per released tensor),
    each group is clipped to ``C`` separately and the noise std is ``sigma C sqrt(G)`` for G
    groups: the same guarantee (sensitivity ``C sqrt(G)``), but a group whose gradients are
    orders of magnitude smaller than another's (LoRA factors next to a classification head)
    keeps its own share of the clipping budget instead of being drowned by the other. Other
    trainable parameters get their plain mean gradient over the logical batch.

    Norms, clipping and the running sums stay in float32 on the parameters' device (no host
    copies per pass); the noise is drawn in float64 on the host from ``generator`` once per
    logical batch. A released parameter without a per-example gradient in a pass (no hooked
    layer used it) contributes zero for that pass.
    """

    def __init__(
        self,
        released: Sequence[torch.nn.Parameter],
        others: Sequence[torch.nn.Parameter],
        *,
        clip_norm: float,
        noise_multiplier: float,
        expected_batch_size: float,
        generator: torch.Generator,
        groups: Sequence[int] | None = None,
        group_clip_norms: Mapping[int, float] | None = None,
    ) -> None:
        if expected_batch_size <= 0 or not math.isfinite(noise_multiplier):
            raise PrivacyError("DP-SGD needs a positive batch size and a finite noise multiplier")
        if groups is not None and len(groups) != len(released):
            raise PrivacyError("DP-SGD groups: one group index per released parameter")
        self.groups = list(groups) if groups is not None else [0] * len(released)
        self.num_groups = len(set(self.groups))
        self.released = list(released)
        self.others = list(others)
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.expected_batch_size = expected_batch_size
        self.generator = generator
        # each group's own C (clip_norm where unset): noise std sigma C_g sqrt(G) in group g is
        # the Gaussian mechanism on the groups rescaled to C = 1, so the guarantee is unchanged
        self.group_clip = {g: (group_clip_norms or {}).get(g, clip_norm) for g in set(self.groups)}
        # per group: examples whose gradient was clipped, and examples seen (on the device)
        self._clipped: dict[int, torch.Tensor] = {}
        self._seen: dict[int, int] = {}
        self._sums: list[torch.Tensor] | None = None

    def per_example_norms(self, group: int | None = None) -> torch.Tensor:
        """Each example's gradient norm over the released tensors of ``group`` (all of them
        when None) jointly (float32), from the last pass; empty when none holds per-example
        gradients."""
        samples = [
            s
            for s, g in zip(map(_gs, self.released), self.groups, strict=True)
            if s is not None and (group is None or g == group)
        ]
        if not samples:
            return torch.zeros(0)
        device = samples[0].device
        squares = [
            torch.linalg.vector_norm(s.reshape(s.shape[0], -1), dim=1, dtype=torch.float32)
            .to(device)
            .square()
            for s in samples
        ]
        return torch.stack(squares).sum(0).sqrt()

    def accumulate(self) -> None:
        """Add the current pass's clipped per-example gradients to the step's sum (each group
        of tensors clipped to ``C`` on its own)."""
        factors: dict[int, torch.Tensor] = {}
        for group in set(self.groups):
            norms = self.per_example_norms(group)
            if norms.numel():
                bound = self.group_clip[group]
                factors[group] = (bound / (norms + 1e-6)).clamp(max=1.0)
                clipped = (norms > bound).sum()
                self._clipped[group] = self._clipped.get(group, 0) + clipped  # type: ignore[assignment]
                self._seen[group] = self._seen.get(group, 0) + norms.numel()
        if not factors:
            return
        if self._sums is None:
            self._sums = [torch.zeros(p.shape, dtype=torch.float32, device=p.device)
                          for p in self.released]  # fmt: skip
        for total, p, group in zip(self._sums, self.released, self.groups, strict=True):
            sample = _gs(p)
            if sample is not None:
                # sum_i c_i g_i as one (1 x B) @ (B x numel) product
                flat = sample.reshape(sample.shape[0], -1).float()
                total += (factors[group].to(flat.device) @ flat).reshape(p.shape)
            p.grad_sample = None  # type: ignore[attr-defined]

    def clipped_fractions(self) -> dict[int, float]:
        """Per group, the fraction of examples so far whose gradient the clipping norm cut:
        near 1, clipping biases the step (the norm is small for this model); near 0, the noise
        is larger than it needs to be."""
        return {g: float(self._clipped[g]) / n for g, n in self._seen.items() if n}

    def apply(self, batch_size: int) -> None:
        """Replace ``.grad`` as described above and drop the per-example gradients."""
        if batch_size > 0:
            self.accumulate()
        sums = self._sums or [torch.zeros(p.shape, dtype=torch.float32, device=p.device)
                              for p in self.released]  # fmt: skip
        self._sums = None
        # G groups each clipped to C: an example moves the sum by at most C sqrt(G), and the
        # noise is calibrated to that sensitivity, so the accountant's sigma is unchanged
        unit = self.noise_multiplier * math.sqrt(self.num_groups)
        for p, summed, group in zip(self.released, sums, self.groups, strict=True):
            std = unit * self.group_clip[group]
            noise = torch.randn(p.shape, generator=self.generator, dtype=torch.float64) * std
            noisy = summed + noise.to(device=summed.device, dtype=torch.float32)
            p.grad = (noisy / self.expected_batch_size).to(p.dtype)
        for p in self.others:
            if p.grad is not None and batch_size > 0:
                p.grad = p.grad / batch_size
        for p in [*self.released, *self.others]:
            p.grad_sample = None  # type: ignore[attr-defined]


def backward_quietly(loss: torch.Tensor) -> None:
    """``loss.backward()`` without torch's note that Opacus' hooks see no input gradients."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss.backward()  # type: ignore[no-untyped-call]
