"""Fixtures: a tiny Llama built from a config, the packaged MiniLM, plans for every method."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from fedlora_client import protocol as p
from tests.client_sdk.fake_server import FakeServer
from tests.tiny_models import minilm_path, write_tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

METHODS = ("fedavg", "hetlora", "flora", "flexlora", "fslora", "sdflora", "prelort")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama (hidden 32) saved as safetensors, with MiniLM's tokenizer files."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def minilm() -> Path:
    return minilm_path()


@pytest.fixture(scope="session")
def llama_spec(tiny_llama: Path) -> p.ModelSpec:
    from fedlora_client import inspect_model

    return inspect_model(tiny_llama, p.TaskType.CAUSAL_LM, ["q_proj", "v_proj"])


@pytest.fixture(scope="session")
def minilm_spec(minilm: Path) -> p.ModelSpec:
    from fedlora_client import inspect_model

    layers = [f"bert.encoder.layer.{i}.attention.self.query" for i in (0, 5)]
    return inspect_model(minilm, p.TaskType.SEQ_CLS, layers, num_labels=2)


def lora_tensors(
    spec: p.ModelSpec, rank: int, *, seed: int, zero_b: bool = True, head: bool = True
) -> dict[str, torch.Tensor]:
    """A start artifact: A random, B zero (or random), and the head for seq-cls."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for module, (d_out, d_in) in spec.modules.items():
        out[p.lora_a_key(module)] = torch.randn(rank, d_in, generator=g) / d_in**0.5
        b = torch.zeros(d_out, rank) if zero_b else torch.randn(d_out, rank, generator=g) * 0.01
        out[p.lora_b_key(module)] = b
    if head:
        for key, shape in spec.extra_trainable.items():
            out[key] = torch.randn(*shape, generator=g) * 0.02
    return out


def body(tensors: dict[str, torch.Tensor]) -> bytes:
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})


def dp_plan(mode: p.DPMode, **kw: object) -> p.DPPlan:
    if mode is p.DPMode.NONE:
        return p.DPPlan(mode=mode, planned_rounds=5)
    values: dict[str, object] = {"noise_multiplier": 1.0, "planned_rounds": 5, "clip_norm": 1.0}
    values.update(kw)
    return p.DPPlan(mode=mode, **values)  # type: ignore[arg-type]


MakeTask = Callable[..., p.TaskAssignment]


def method_task(
    server: FakeServer,
    spec: p.ModelSpec,
    task_type: p.TaskType,
    method: str,
    *,
    dp: p.DPMode = p.DPMode.NONE,
    task_id: str = "t1",
    steps: int = 2,
    batch_size: int = 4,
    federation_id: str = "f1",
) -> p.TaskAssignment:
    """A task whose plan has the shape ``method``'s planning hook produces."""
    lora = p.LoraSpec(rank=4, lora_alpha=8)
    start_lora, start_rank, zero_b = lora, 4, method in {"fedavg", "flora", "prelort", "sdflora"}
    extra: dict[str, object] = {}
    if method == "hetlora":  # truncation of the global module; stored at another scale
        lora = p.LoraSpec(rank=2, lora_alpha=4)
        start_lora, start_rank = p.LoraSpec(rank=2, lora_alpha=8), 2
    if method == "flora":
        merge = lora_tensors(spec, 6, seed=7, zero_b=False, head=False)
        extra["merge"] = server.add_artifact(body(merge), p.LoraSpec(rank=6, lora_alpha=12))
    if method == "fslora":  # rank-k slice of a rank-8 global module, alpha carries s * r / k
        lora = start_lora = p.LoraSpec(rank=4, lora_alpha=2.0 * 8 / 4 * 2, use_rslora=True)
        idx = [1, 3, 5, 6]
        extra["sketch"] = p.SketchPlan(global_rank=8, indices={m: idx for m in spec.modules})
    if method == "sdflora":
        extra["private"] = p.PrivateModule(lora=p.LoraSpec(rank=2, lora_alpha=2))
    if method == "prelort":
        extra["nested_truncations"] = [1, 2, 4]
    start = lora_tensors(spec, start_rank, seed=1, zero_b=zero_b)
    plan = p.TrainingPlan(
        strategy=method,
        task_type=task_type,
        base_model_id="test-model",
        model=spec,
        lora=lora,
        start=server.add_artifact(body(start), start_lora),
        training=p.LocalTraining(steps=steps, batch_size=batch_size, max_seq_len=32),
        dp=dp_plan(dp),
        seed=3,
        **extra,  # type: ignore[arg-type]
    )
    return p.TaskAssignment(
        task_id=task_id,
        federation_id=federation_id,
        round_number=1,
        lease_expires_at="2099-01-01T00:00:00Z",
        plan=plan,
    )


def membership(spec: p.ModelSpec, task_type: p.TaskType, fid: str = "f1") -> p.MembershipInfo:
    return p.MembershipInfo(
        federation_id=fid,
        federation_name="test",
        status="running",
        base_model_id="test-model",
        task_type=task_type,
        model=spec,
        rank_budget=8,
        epsilon_budget=10.0,
        epsilon_spent=0.0,
    )


def cls_records(n: int = 24) -> list[dict[str, object]]:
    words = ["good", "great", "bad", "awful", "fine", "poor"]
    return [
        {"text": f"this is {words[i % 6]} number {i}", "label": int(i % 6 < 2)} for i in range(n)
    ]


def lm_records(n: int = 24) -> list[dict[str, object]]:
    return [{"prompt": f"question {i}?", "response": f"answer {i}."} for i in range(n)]
