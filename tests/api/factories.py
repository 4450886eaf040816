"""Test data: tiny model specs, training plans with real start artifacts, valid updates."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import numpy as np
from safetensors.numpy import save

from api.storage import ArtifactStore
from fedlora_client.protocol import (
    ArtifactRef,
    DPPlan,
    LocalTraining,
    LoraSpec,
    ModelSpec,
    TaskType,
    TrainingPlan,
    UploadManifest,
)

FINGERPRINT = "ab" * 32
MODULES = {"encoder.layer.0.query": (8, 6), "encoder.layer.0.value": (8, 6)}
SPEC = ModelSpec(fingerprint=FINGERPRINT, modules=MODULES)
HEAD = {"base_model.model.classifier.weight": [2, 8], "base_model.model.classifier.bias": [2]}
FEDERATION_SPEC = ModelSpec(fingerprint=FINGERPRINT, modules=MODULES, extra_trainable=HEAD)
"""What `fedlora-client inspect --task seq_cls` prints: a seq_cls federation needs the head."""


def federation_body(name: str = "fed", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "base_model_id": "tiny/bert",
        "task_type": "seq_cls",
        "model": FEDERATION_SPEC.model_dump(mode="json"),
        "target_modules": ["query", "value"],
        "strategy": "fedavg",
        "strategy_params": {},
        "global_rank": 4,
        "num_rounds": 2,
        "clients_per_round": 2,
        "min_clients": 1,
        "round_deadline_seconds": 600,
        "dp": {"mode": "sample", "noise_multiplier": 1.0, "epsilon_budget": 5.0},
    }
    body.update(overrides)
    return body


def adapter_bytes(rank: int, fill: float = 0.01, dtype: Any = np.float32) -> bytes:
    tensors = {}
    for key, shape in make_plan_shapes(rank).items():
        tensors[key] = np.full(shape, fill, dtype=dtype)
    return save(tensors)


def make_plan_shapes(rank: int) -> dict[str, tuple[int, ...]]:
    return TrainingPlan(
        strategy="fedavg",
        task_type=TaskType.SEQ_CLS,
        base_model_id="tiny/bert",
        model=SPEC,
        lora=LoraSpec(rank=rank, lora_alpha=2 * rank),
        start=ArtifactRef(sha256="0" * 64, size=0, lora=LoraSpec(rank=rank, lora_alpha=2 * rank)),
        training=LocalTraining(),
        dp=DPPlan(noise_multiplier=1.0, planned_rounds=1),
        seed=0,
    ).upload_shapes()


def make_plan(store: ArtifactStore, rank: int = 2, seed: int = 0) -> TrainingPlan:
    """A fedavg plan whose start artifact really exists in ``store``."""
    lora = LoraSpec(rank=rank, lora_alpha=2 * rank)
    ref = store.put_bytes(adapter_bytes(rank, 0.0))
    return TrainingPlan(
        strategy="fedavg",
        task_type=TaskType.SEQ_CLS,
        base_model_id="tiny/bert",
        model=SPEC,
        lora=lora,
        start=ArtifactRef(sha256=ref.sha256, size=ref.size, lora=lora),
        training=LocalTraining(),
        dp=DPPlan(noise_multiplier=1.0, planned_rounds=2),
        seed=seed,
    )


def manifest_for(
    task_id: uuid.UUID | str, body: bytes, rank: int = 2, eps: float = 0.5
) -> dict[str, Any]:
    return UploadManifest(
        task_id=str(task_id),
        base_model_fingerprint=FINGERPRINT,
        lora=LoraSpec(rank=rank, lora_alpha=2 * rank),
        sha256=hashlib.sha256(body).hexdigest(),
        size=len(body),
        num_examples=10,
        metrics={"train_loss": 0.5},
        epsilon_spent=eps,
    ).model_dump(mode="json")
