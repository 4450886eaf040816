"""Clipping bounds every update, noise has the promised scale, DP-SGD's per-example gradients
equal one-example backward passes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedlora_client._errors import NonFiniteUpdateError
from fedlora_client._privacy import (
    DPSGD,
    add_gaussian_noise,
    backward_quietly,
    clip_update,
    ensure_uploadable,
    joint_norm,
    privatize_update,
    secure_generator,
)


def _update(scale: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a": torch.randn(8, 16, generator=g) * scale,
        "b": torch.randn(16, 8, generator=g) * scale,
    }


@pytest.mark.parametrize("scale", [0.0, 1e-4, 0.1, 1.0, 1e3, 1e30])
@pytest.mark.parametrize("clip", [0.1, 1.0, 5.0])
def test_clipped_norm_is_at_most_c(scale: float, clip: float) -> None:
    update = _update(scale, seed=int(scale * 7) % 100)
    clipped = clip_update(update, clip)
    assert joint_norm(clipped) <= clip * (1 + 1e-6)
    if joint_norm(update) <= clip:  # small updates pass unchanged
        for k in update:
            torch.testing.assert_close(clipped[k], update[k])
    else:
        assert joint_norm(clipped) == pytest.approx(clip, rel=1e-5)


@pytest.mark.parametrize("bad", [math.nan, math.inf, 2.0**20, -3.0e37])
def test_what_the_server_would_refuse_is_never_uploaded(bad: float) -> None:
    update = _update(1.0, seed=0)
    ensure_uploadable(update)
    update["b"][3, 2] = bad
    with pytest.raises(NonFiniteUpdateError, match="nothing was uploaded"):
        ensure_uploadable(update)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_update_is_an_error(bad: float) -> None:
    update = _update(1.0, seed=0)
    update["b"][3, 2] = bad
    with pytest.raises(NonFiniteUpdateError, match="nothing was uploaded"):
        clip_update(update, 1.0)
    start = {k: torch.zeros_like(v) for k, v in update.items()}
    with pytest.raises(NonFiniteUpdateError):
        privatize_update(
            start, update, clip_norm=1.0, noise_multiplier=1.0, generator=secure_generator(0)
        )


def test_noise_std_is_sigma_times_c() -> None:
    sigma, clip = 1.3, 0.7
    zeros = {"x": torch.zeros(400_000)}
    noise = add_gaussian_noise(zeros, sigma * clip, secure_generator(1234))["x"].double()
    assert noise.std().item() == pytest.approx(sigma * clip, rel=0.01)
    assert abs(noise.mean().item()) < 0.01


def test_client_level_update_is_clipped_then_noised() -> None:
    start = {k: torch.ones_like(v) for k, v in _update(1.0, 0).items()}
    final = {k: start[k] + v for k, v in _update(100.0, 1).items()}
    out = privatize_update(
        start, final, clip_norm=1.0, noise_multiplier=0.0, generator=secure_generator(0)
    )
    assert joint_norm({k: out[k] - start[k] for k in out}) == pytest.approx(1.0, rel=1e-5)
    noisy = privatize_update(
        start, final, clip_norm=1.0, noise_multiplier=5.0, generator=secure_generator(0)
    )
    assert joint_norm({k: noisy[k] - start[k] for k in out}) > 5.0  # 256 coords of std 5


def test_secure_generator_differs_between_calls_without_a_seed() -> None:
    a = torch.randn(4, generator=secure_generator())
    b = torch.randn(4, generator=secure_generator())
    assert not torch.equal(a, b)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(6, 5)
        self.frozen.requires_grad_(False)
        self.a = nn.Linear(5, 3, bias=False)
        self.b = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(torch.tanh(self.frozen(x))))


def test_per_example_gradients_equal_one_example_backward() -> None:
    from opacus import GradSampleModule

    torch.manual_seed(0)
    model = _Tiny()
    x, y = torch.randn(7, 6), torch.randint(0, 2, (7,))
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    backward_quietly(nn.functional.cross_entropy(gsm(x), y, reduction="none").sum())
    per_example = {n: q.grad_sample.clone() for n, q in model.named_parameters() if q.requires_grad}
    gsm._close()
    for i in range(7):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, param in model.named_parameters():
            if param.requires_grad:
                torch.testing.assert_close(per_example[name][i], param.grad, rtol=1e-5, atol=1e-7)


def test_dpsgd_step_clips_each_example_and_adds_calibrated_noise() -> None:
    params = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))]
    params[0].grad_sample = torch.tensor([[30.0, 40.0, 0.0], [0.3, 0.0, 0.0]])  # norms 50, 0.3
    params[1].grad_sample = torch.zeros(2, 2)
    step = DPSGD(params, [], clip_norm=1.0, noise_multiplier=0.0, expected_batch_size=2.0,
                 generator=secure_generator(0))  # fmt: skip
    step.apply(batch_size=2)
    expected = (torch.tensor([0.6, 0.8, 0.0]) + torch.tensor([0.3, 0.0, 0.0])) / 2
    torch.testing.assert_close(params[0].grad, expected, rtol=1e-5, atol=1e-6)
    draws = []
    for seed in range(200):
        params[0].grad_sample = torch.zeros(1, 3)
        params[1].grad_sample = torch.zeros(1, 2)
        noisy = DPSGD(params, [], clip_norm=2.0, noise_multiplier=1.5, expected_batch_size=1.0,
                      generator=secure_generator(seed))  # fmt: skip
        noisy.apply(batch_size=1)
        draws.append(torch.cat([params[0].grad, params[1].grad]))
    assert torch.stack(draws).std().item() == pytest.approx(3.0, rel=0.1)


def test_grouped_clipping_bounds_each_group_by_its_own_norm_and_noises_it_to_match() -> None:
    """Grouped clipping: the LoRA factors (group 0, C = 1) and the head (group 1, C = 10) are
    clipped apart, the clipped fractions are reported per group, and group g's noise std is
    sigma C_g sqrt(G): the Gaussian mechanism on the groups rescaled to norm 1 each."""
    lora, head = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    lora.grad_sample = torch.tensor([[3.0, 4.0], [0.6, 0.0]])  # norms 5 (clipped), 0.6
    head.grad_sample = torch.tensor([[6.0, 8.0], [0.0, 30.0]])  # norms 10 (kept), 30 (clipped)
    step = DPSGD(
        [lora, head], [], clip_norm=1.0, noise_multiplier=0.0, expected_batch_size=2.0,
        generator=secure_generator(0), groups=[0, 1], group_clip_norms={1: 10.0},
    )  # fmt: skip
    step.accumulate()
    assert step.clipped_fractions() == {0: 0.5, 1: 0.5}
    step.apply(batch_size=0)
    torch.testing.assert_close(lora.grad, (torch.tensor([0.6, 0.8]) + torch.tensor([0.6, 0.0])) / 2)
    torch.testing.assert_close(
        head.grad, (torch.tensor([6.0, 8.0]) + torch.tensor([0.0, 10.0])) / 2
    )
    draws: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    for seed in range(300):
        lora.grad_sample, head.grad_sample = torch.zeros(1, 2), torch.zeros(1, 2)
        noisy = DPSGD([lora, head], [], clip_norm=1.0, noise_multiplier=1.5,
                      expected_batch_size=1.0, generator=secure_generator(seed), groups=[0, 1],
                      group_clip_norms={1: 10.0})  # fmt: skip
        noisy.apply(batch_size=1)
        draws[0].append(lora.grad.clone())
        draws[1].append(head.grad.clone())
    root2 = 2**0.5
    assert torch.stack(draws[0]).std().item() == pytest.approx(1.5 * 1.0 * root2, rel=0.1)
    assert torch.stack(draws[1]).std().item() == pytest.approx(1.5 * 10.0 * root2, rel=0.1)


def test_dpsgd_leaves_the_private_module_unnoised() -> None:
    """SDFLoRA: only released parameters are clipped and noised; others get their mean grad."""
    released, private = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(3))
    released.grad_sample = torch.ones(2, 4)
    private.grad_sample = torch.ones(2, 3)
    private.grad = torch.tensor([2.0, 4.0, 6.0])  # the summed gradient of a batch of 2
    step = DPSGD([released], [private], clip_norm=1.0, noise_multiplier=3.0,
                 expected_batch_size=2.0, generator=secure_generator(0))  # fmt: skip
    step.apply(batch_size=2)
    torch.testing.assert_close(private.grad, torch.tensor([1.0, 2.0, 3.0]))
    assert not torch.allclose(released.grad, torch.full((4,), 0.5))  # noised
    assert private.grad_sample is None
    assert released.grad_sample is None
