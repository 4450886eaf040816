"""Local training of one round: the plan's LoRA, its method's twists, DP, and the final tensors.

:func:`train_round` runs ``plan.training.steps`` optimizer steps on a PeftModel built by
:func:`fedlora_client._adapters.build_peft_model` and returns the tensors to upload (exactly
``plan.upload_shapes()``, PEFT saved key names, after differential privacy) with metrics.
Sample-level DP uses Poisson sampling and Opacus per-example gradients (see ``_privacy``);
other modes draw fixed-size batches by shuffling.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional

from fedlora_client._adapters import (
    PRIVATE,
    TRAINED,
    NestedTruncation,
    adapter_parameters,
    adapter_tensors,
    tail_norm,
)
from fedlora_client._data import IGNORE_INDEX, EncodedData
from fedlora_client._dp_grads import LinearGradSampler
from fedlora_client._errors import TrainingOutOfMemoryError
from fedlora_client._privacy import (
    DPSGD,
    backward_quietly,
    ensure_finite,
    privatize_update,
    resolve_noise_multiplier,
    secure_generator,
)
from fedlora_client.protocol import (
    DPMode,
    TaskType,
    TrainingPlan,
    freezes_lora_a,
    local_schedule,
)

log = logging.getLogger("fedlora_client")


@dataclass
class RoundResult:
    """What one local round produced."""

    tensors: dict[str, torch.Tensor]
    """The upload: final factors (+ head) after DP, by PEFT saved key."""
    metrics: dict[str, float]
    noise_multiplier: float
    sampling_rate: float
    private: dict[str, torch.Tensor] | None = None
    """SDFLoRA private module after training (kept locally, never uploaded)."""
    extra: dict[str, Any] = field(default_factory=dict)


def per_example_loss(
    model: Any,
    batch: dict[str, torch.Tensor],
    task: TaskType,
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loss of each example of ``batch`` (shape ``(B,)``); causal LM: mean over its tokens.

    ``logit_bias`` (classification): added to the logits before the cross-entropy (logit
    adjustment by the log label prior).
    """
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits.float()
    labels = batch["labels"]
    if task is TaskType.SEQ_CLS:
        if logit_bias is not None:
            logits = logits + logit_bias.to(logits.device)
        return functional.cross_entropy(logits, labels, reduction="none")
    shifted = labels[:, 1:]
    tokens = functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), shifted, reduction="none", ignore_index=IGNORE_INDEX
    )
    counts = (shifted != IGNORE_INDEX).sum(1).clamp(min=1)
    return tokens.sum(1) / counts


def log_label_prior(data: EncodedData, num_labels: int) -> torch.Tensor:
    """``log((n_c + 1) / (N + C))`` from the local label counts (add-one smoothing)."""
    counts = torch.bincount(torch.tensor(data.targets, dtype=torch.long), minlength=num_labels)
    counts = counts[:num_labels].double() + 1.0
    return (counts / counts.sum()).log().float()


def _fixed_batches(
    n: int, size: int, rng: random.Random, lengths: list[int] | None = None, group: int = 1
) -> Iterator[list[int]]:
    """Batches of ``size`` from a reshuffled stream of ``0..n-1`` (every example once per pass).

    With ``lengths`` and ``group > 1``, every ``group`` consecutive batches are regrouped by
    length (the same examples, sorted, cut into batches, in random order): less padding, the
    same examples per round (Hugging Face's ``group_by_length`` idea).
    """
    order: list[int] = []
    while True:
        need = size * group
        while len(order) < need:
            extra = list(range(n))
            rng.shuffle(extra)
            order.extend(extra)
        chunk, order = order[:need], order[need:]
        if lengths is not None and group > 1:
            chunk.sort(key=lambda i: lengths[i])
        batches = [chunk[i : i + size] for i in range(0, need, size)]
        if group > 1:
            rng.shuffle(batches)
        yield from batches


def _poisson_batches(n: int, rate: float, generator: torch.Generator) -> Iterator[list[int]]:
    while True:
        yield torch.nonzero(torch.rand(n, generator=generator) < rate).flatten().tolist()


def micro_batches(indices: list[int], lengths: list[int], size: int | None) -> list[list[int]]:
    """``indices`` cut into passes of at most ``size`` examples, sorted by length (less
    padding); one pass when ``size`` is None or covers them all."""
    if size is None or len(indices) <= size:
        return [indices] if indices else []
    ordered = sorted(indices, key=lambda i: lengths[i])
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


DP_PHYSICAL_BATCH = 32
"""Micro-batch of the DP recipe's large logical batches when training.physical_batch_size is
unset."""


def _optimizer(params: list[torch.nn.Parameter], plan: TrainingPlan) -> torch.optim.Optimizer:
    t = plan.training
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)


def _progress(enabled: bool, total: int) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    progress = Progress(
        TextColumn("local training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        disable=not enabled,
        transient=True,
    )
    return progress, progress.add_task("train", total=total, loss="-")


def num_labels_of(plan: TrainingPlan) -> int:
    """Classes of a seq-cls plan: the first dimension of the head's weight."""
    for key, shape in plan.model.extra_trainable.items():
        if key.endswith(".weight"):
            return int(shape[0])
    return 2


def train_round(
    model: Any,
    plan: TrainingPlan,
    data: EncodedData,
    *,
    progress: bool = True,
    noise_seed: int | None = None,
    accountant: str = "rdp",
) -> RoundResult:
    """Train ``model`` (built for ``plan``) on ``data`` and return the privatized upload."""
    t, dp = plan.training, plan.dp
    n = len(data)
    bs, steps = local_schedule(t, dp, n)  # the DP recipe's batch and steps under DP
    rate = min(1.0, bs / n)
    physical = t.physical_batch_size
    if physical is None and dp.mode is DPMode.SAMPLE and dp.recipe == "auto":
        physical = DP_PHYSICAL_BATCH
    sigma = resolve_noise_multiplier(dp, sampling_rate=rate, steps=steps, accountant=accountant)  # type: ignore[arg-type]
    generator = secure_generator(noise_seed)
    released = adapter_parameters(model, TRAINED)
    private = adapter_parameters(model, PRIVATE) if plan.private is not None else {}
    start = adapter_tensors(model, TRAINED) if dp.mode is DPMode.CLIENT else {}
    if freezes_lora_a(t, dp):  # FFA-LoRA: A stays as the plan started it (it is still uploaded)
        for key, param in [*released.items(), *private.items()]:
            if key.endswith(".lora_A.weight"):
                param.requires_grad_(False)
    released = {k: v for k, v in released.items() if v.requires_grad}
    private = {k: v for k, v in private.items() if v.requires_grad}
    trainable = [*released.values(), *private.values()]
    anchors = [p.detach().clone() for p in trainable] if t.proximal_mu > 0 else []
    optimizer = _optimizer(trainable, plan)
    device = next(iter(released.values())).device
    rng = random.Random(plan.seed)
    nested = NestedTruncation(model, plan.lora.rank) if plan.nested_truncations else None
    penalty = plan.tail_penalty
    lengths = [len(row) for row in data.input_ids]
    logit_bias = None
    if data.task_type is TaskType.SEQ_CLS and t.label_balance == "logit_adjustment":
        logit_bias = log_label_prior(data, num_labels_of(plan))
    sample_dp = dp.mode is DPMode.SAMPLE
    dpsgd: DPSGD | None = None
    sampler: LinearGradSampler | None = None
    if sample_dp:
        sampler = LinearGradSampler(model)  # per-example gradients of every trainable tensor
        # SDFLoRA's private module is trained with DP-SGD too, jointly clipped with the shared
        # one: every trained tensor is then a function of noisy, clipped steps, so the released
        # shared module carries the accountant's sample-level guarantee (the private module
        # never leaves the machine, but it must not carry unbounded information into it)
        head = set(plan.model.extra_trainable)
        keys = [*released, *private]
        dpsgd = DPSGD(
            [*released.values(), *private.values()],
            [],
            clip_norm=dp.clip_norm,
            noise_multiplier=sigma,
            expected_batch_size=rate * n,
            generator=generator,
            # grouped clipping: the head apart from the LoRA factors (its gradients are orders
            # of magnitude larger and would take the whole clipping budget)
            groups=[int(k in head) for k in keys] if dp.clipping == "grouped" else None,
            group_clip_norms={1: dp.head_clip_norm} if dp.head_clip_norm is not None else None,
        )
        batches = _poisson_batches(n, rate, generator)
    else:
        batches = _fixed_batches(n, bs, rng, lengths, group=steps)
    model.train()
    losses: list[float] = []
    tails: list[float] = []
    seen = 0
    bar, task_id = _progress(progress, steps)
    try:
        with bar:
            for _ in range(steps):
                if nested is not None:
                    nested.set_level(rng.choice(plan.nested_truncations))
                indices = next(batches)
                total = 0.0
                for part in micro_batches(indices, lengths, physical):
                    batch = {k: v.to(device) for k, v in data.batch(part).items()}
                    loss = per_example_loss(model, batch, data.task_type, logit_bias)
                    total += float(loss.detach().sum())
                    # DP-SGD sums (and clips) per example; otherwise the batch mean, in parts
                    backward_quietly(loss.sum() if sample_dp else loss.sum() / len(indices))
                    if dpsgd is not None:
                        dpsgd.accumulate()
                if indices:
                    losses.append(total / len(indices))
                    seen += len(indices)
                if dpsgd is not None:
                    dpsgd.apply(len(indices))
                for param, anchor in zip(trainable, anchors, strict=False):
                    # FedProx: the gradient of mu/2 ||w - w_start||^2 (data-independent)
                    if param.grad is None:
                        param.grad = torch.zeros_like(param)
                    param.grad.add_(param.detach() - anchor, alpha=t.proximal_mu)
                if penalty is not None:
                    # data-independent, so added after the DP noise: the guarantee is unchanged
                    adapter = adapter_parameters(model, TRAINED)  # A too, even when frozen
                    reg = penalty.weight * tail_norm(adapter, plan.model.modules, penalty.keep)
                    reg.backward()  # type: ignore[no-untyped-call]
                    tails.append(float(reg.detach()) / penalty.weight)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                bar.update(task_id, advance=1, loss=f"{losses[-1]:.4f}" if losses else "-")
    except torch.OutOfMemoryError as exc:
        raise TrainingOutOfMemoryError(
            f"out of accelerator memory at rank {plan.lora.rank}, batch {bs}: ask for a smaller "
            "rank, lower training.batch_size (or set training.physical_batch_size) or "
            "max_seq_len, or train on CPU"
        ) from exc
    finally:
        if nested is not None:
            nested.remove()
        if sampler is not None:
            sampler.close()
    model.eval()
    final = adapter_tensors(model, TRAINED)
    if dp.mode is DPMode.CLIENT:
        final = privatize_update(
            start, final, clip_norm=dp.clip_norm, noise_multiplier=sigma, generator=generator
        )
    else:
        ensure_finite(final)
    metrics = {
        "train_loss": sum(losses) / len(losses) if losses else float("nan"),
        "examples_seen": float(seen),
        "steps": float(steps),
        "noise_multiplier": sigma,
    }
    if tails:
        metrics["tail_norm"] = tails[-1]
    if dpsgd is not None:
        # how much the clipping norms cut (the LoRA factors' group, and the head's apart)
        for group, fraction in dpsgd.clipped_fractions().items():
            metrics["dp_clipped_fraction" + ("_head" if group else "")] = fraction
    return RoundResult(
        tensors={k: final[k].contiguous() for k in plan.upload_shapes()},
        metrics=metrics,
        noise_multiplier=sigma,
        sampling_rate=rate,
        private=adapter_tensors(model, PRIVATE) if plan.private is not None else None,
    )


@torch.no_grad()
def evaluate(
    model: Any, data: EncodedData, *, batch_size: int = 32, margins: list[float] | None = None
) -> dict[str, float]:
    """Mean loss (and accuracy for classification) of ``model`` on ``data``.

    ``margins``, when given for a two-label classifier, receives each row's logit margin
    ``logit[1] - logit[0]`` in ``data``'s order (for the threshold calibration's histogram).
    Reported in the clear: evaluation metrics are not covered by the DP guarantee.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        indices = list(range(start, min(start + batch_size, len(data))))
        batch = {k: v.to(device) for k, v in data.batch(indices).items()}
        total_loss += float(per_example_loss(model, batch, data.task_type).sum())
        if data.task_type is TaskType.SEQ_CLS:
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
            if margins is not None and logits.shape[-1] == 2:
                margins.extend((logits[:, 1] - logits[:, 0]).float().tolist())
    model.train(was_training)
    metrics = {"eval_loss": total_loss / len(data)}
    if data.task_type is TaskType.SEQ_CLS:
        metrics["eval_accuracy"] = correct / len(data)
    return metrics
