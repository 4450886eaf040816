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
from fedlora_client._errors import TrainingOutOfMemoryError
from fedlora_client._privacy import (
    DPSGD,
    backward_quietly,
    ensure_finite,
    privatize_update,
    resolve_noise_multiplier,
    secure_generator,
)
from fedlora_client.protocol import DPMode, TaskType, TrainingPlan

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


def per_example_loss(model: Any, batch: dict[str, torch.Tensor], task: TaskType) -> torch.Tensor:
    """Loss of each example of ``batch`` (shape ``(B,)``); causal LM: mean over its tokens."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits.float()
    labels = batch["labels"]
    if task is TaskType.SEQ_CLS:
        return functional.cross_entropy(logits, labels, reduction="none")
    shifted = labels[:, 1:]
    tokens = functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), shifted, reduction="none", ignore_index=IGNORE_INDEX
    )
    counts = (shifted != IGNORE_INDEX).sum(1).clamp(min=1)
    return tokens.sum(1) / counts


def _fixed_batches(n: int, size: int, rng: random.Random) -> Iterator[list[int]]:
    order: list[int] = []
    while True:
        if len(order) < size:
            extra = list(range(n))
            rng.shuffle(extra)
            order.extend(extra)
        yield order[:size]
        del order[:size]


def _poisson_batches(n: int, rate: float, generator: torch.Generator) -> Iterator[list[int]]:
    while True:
        yield torch.nonzero(torch.rand(n, generator=generator) < rate).flatten().tolist()


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
    n, steps, bs = len(data), plan.training.steps, plan.training.batch_size
    rate = min(1.0, bs / n)
    dp = plan.dp
    sigma = resolve_noise_multiplier(dp, sampling_rate=rate, steps=steps, accountant=accountant)  # type: ignore[arg-type]
    generator = secure_generator(noise_seed)
    released = adapter_parameters(model, TRAINED)
    private = adapter_parameters(model, PRIVATE) if plan.private is not None else {}
    start = adapter_tensors(model, TRAINED) if dp.mode is DPMode.CLIENT else {}
    trainable = [*released.values(), *private.values()]
    optimizer = _optimizer(trainable, plan)
    device = next(iter(released.values())).device
    rng = random.Random(plan.seed)
    nested = NestedTruncation(model, plan.lora.rank) if plan.nested_truncations else None
    penalty = plan.tail_penalty
    sample_dp = dp.mode is DPMode.SAMPLE
    if sample_dp and plan.private is not None:
        log.warning(
            "SDFLoRA with sample-level DP: the private module is trained without noise, so the "
            "reported epsilon is not a formal sample-level guarantee (see the SDK README)"
        )
    forward_model: Any = model
    dpsgd: DPSGD | None = None
    if sample_dp:
        from opacus import GradSampleModule

        forward_model = GradSampleModule(model, batch_first=True, loss_reduction="sum")
        dpsgd = DPSGD(
            list(released.values()),
            list(private.values()),
            clip_norm=dp.clip_norm,
            noise_multiplier=sigma,
            expected_batch_size=rate * n,
            generator=generator,
        )
        batches = _poisson_batches(n, rate, generator)
    else:
        batches = _fixed_batches(n, bs, rng)
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
                if indices:
                    batch = {k: v.to(device) for k, v in data.batch(indices).items()}
                    loss = per_example_loss(forward_model, batch, data.task_type)
                    losses.append(float(loss.detach().mean()))
                    seen += len(indices)
                    backward_quietly(loss.sum() if sample_dp else loss.mean())
                if dpsgd is not None:
                    dpsgd.apply(len(indices))
                if penalty is not None:
                    # data-independent, so added after the DP noise: the guarantee is unchanged
                    reg = penalty.weight * tail_norm(released, plan.model.modules, penalty.keep)
                    reg.backward()  # type: ignore[no-untyped-call]
                    tails.append(float(reg.detach()) / penalty.weight)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                bar.update(task_id, advance=1, loss=f"{losses[-1]:.4f}" if losses else "-")
    except torch.OutOfMemoryError as exc:
        raise TrainingOutOfMemoryError(
            f"out of accelerator memory at rank {plan.lora.rank}, batch {bs}: ask for a smaller "
            "rank, lower training.batch_size or max_seq_len, or train on CPU"
        ) from exc
    finally:
        if nested is not None:
            nested.remove()
        if sample_dp:
            forward_model._close()
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
    return RoundResult(
        tensors={k: final[k].contiguous() for k in plan.upload_shapes()},
        metrics=metrics,
        noise_multiplier=sigma,
        sampling_rate=rate,
        private=adapter_tensors(model, PRIVATE) if plan.private is not None else None,
    )


@torch.no_grad()
def evaluate(model: Any, data: EncodedData, *, batch_size: int = 32) -> dict[str, float]:
    """Mean loss (and accuracy for classification) of ``model`` on ``data``.

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
    model.train(was_training)
    metrics = {"eval_loss": total_loss / len(data)}
    if data.task_type is TaskType.SEQ_CLS:
        metrics["eval_accuracy"] = correct / len(data)
    return metrics
