"""Shared builders for the worker's numeric tests: tiny models, contexts and fake updates."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from fedlora_client.protocol import ModelSpec, TaskType
from worker.strategies import get_strategy
from worker.strategies.base import (
    ClientAssignment,
    ClientUpdate,
    Participant,
    PlanContext,
    Strategy,
)
from worker.strategies.params import validate_params

FINGERPRINT = "0" * 64

CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ],
)
DEVICES = ["cpu", CUDA]
"""Parametrize over these to run a test on the CPU and, when present, on CUDA."""


def tiny_model(*, head: bool = True) -> ModelSpec:
    """Four adapted modules in two shape groups, plus an optional classifier head."""
    modules = {
        "layers.0.q_proj": (24, 16),
        "layers.0.o_proj": (16, 24),
        "layers.1.q_proj": (24, 16),
        "layers.1.o_proj": (16, 24),
    }
    extra = {"base_model.model.classifier.weight": [3, 16], "base_model.model.classifier.bias": [3]}
    return ModelSpec(
        fingerprint=FINGERPRINT, modules=modules, extra_trainable=extra if head else {}
    )


def make_ctx(
    strategy: str,
    budgets: Sequence[int] = (2, 4, 8),
    *,
    global_rank: int = 8,
    round_number: int = 1,
    params: dict[str, object] | None = None,
    lora_alpha: float = 16.0,
    use_rslora: bool = False,
    model: ModelSpec | None = None,
    seed: int = 7,
) -> PlanContext:
    return PlanContext(
        federation_id="fed-1",
        round_number=round_number,
        total_rounds=5,
        seed=seed,
        task_type=TaskType.SEQ_CLS,
        model=model or tiny_model(),
        global_rank=global_rank,
        lora_alpha=lora_alpha,
        use_rslora=use_rslora,
        params=validate_params(strategy, params),
        participants=tuple(
            Participant(client_id=f"c{i}", rank_budget=b) for i, b in enumerate(budgets)
        ),
    )


def make_strategy(ctx: PlanContext, name: str, device: str = "cpu") -> Strategy:
    return get_strategy(name, ctx.params, device=device)


def fake_update(
    assignment: ClientAssignment,
    num_examples: int,
    *,
    seed: int,
    scale: float = 0.1,
    dtype: torch.dtype = torch.float32,
) -> ClientUpdate:
    """The start tensors plus noise (B made non-zero): what a client's training might return."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        k: (v + scale * torch.randn(v.shape, generator=gen)).to(dtype)
        for k, v in assignment.start.items()
    }
    return ClientUpdate(
        client_id=assignment.client_id,
        lora=assignment.lora,
        tensors=tensors,
        num_examples=num_examples,
    )


def fake_updates(
    assignments: dict[str, ClientAssignment], sizes: Sequence[int] | None = None, seed: int = 0
) -> list[ClientUpdate]:
    sizes = sizes or [10 * (i + 1) for i in range(len(assignments))]
    return [
        fake_update(a, n, seed=seed + i)
        for i, (a, n) in enumerate(zip(assignments.values(), sizes, strict=True))
    ]
