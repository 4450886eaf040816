"""PEFT adapter files, seeded initialisation and safetensors (de)serialisation helpers.

* :func:`peft_adapter_config` builds the ``adapter_config.json`` dict that
  ``PeftModel.from_pretrained`` accepts (causal LM and sequence classification, with the head in
  ``modules_to_save``).
* :func:`tensors_to_bytes` / :func:`tensors_from_bytes` are the only (de)serialisers of tensors:
  safetensors, never pickle.
* :func:`derive_seed`, :func:`kaiming_uniform_a` and :func:`init_head` give reproducible
  initialisation: A Kaiming-uniform like PEFT (``kaiming_uniform_(a=sqrt(5))``, i.e.
  ``U(-1/sqrt(d_in), 1/sqrt(d_in))``), B zero, head weights ``N(0, 0.02)`` and biases zero.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from fedlora_client.protocol import PEFT_PREFIX, LoraSpec, ModelSpec, TaskType

HEAD_INIT_STD = 0.02
"""Std of the normal init of head weight matrices (the transformers ``initializer_range``)."""


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed` of ``parts``."""
    gen = torch.Generator()
    gen.manual_seed(derive_seed(*parts))
    return gen


def kaiming_uniform_a(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """PEFT's A init: ``kaiming_uniform_(a=sqrt(5))`` = ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    bound = 1.0 / math.sqrt(shape[-1])
    return (torch.rand(shape, generator=gen, dtype=torch.float32) * 2.0 - 1.0) * bound


def init_head(key: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """A head tensor as the model would initialise it: biases 0, 1-D weights 1, else N(0, .02)."""
    if key.endswith("bias"):
        return torch.zeros(shape)
    if len(shape) == 1:
        return torch.ones(shape)
    return torch.randn(shape, generator=gen) * HEAD_INIT_STD


def modules_to_save(model: ModelSpec) -> list[str]:
    """Module names of the ``extra_trainable`` tensors (``base_model.model.classifier.weight`` ->
    ``classifier``), for PEFT's ``modules_to_save``."""
    names: list[str] = []
    for key in model.extra_trainable:
        name = key.removeprefix(PEFT_PREFIX).rsplit(".", 1)[0]
        if name not in names:
            names.append(name)
    return names


def peft_adapter_config(
    *,
    model: ModelSpec,
    lora: LoraSpec,
    task_type: TaskType,
    base_model_id: str | None = None,
) -> dict[str, Any]:
    """``adapter_config.json`` content for PEFT tensors at ``lora`` targeting ``model.modules``.

    Target modules are the full module paths (PEFT matches a name equal to or ending with
    ``.<target>``), so exactly the modules in ``model.modules`` are adapted.
    """
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if task_type is TaskType.CAUSAL_LM else "SEQ_CLS",
        "base_model_name_or_path": base_model_id,
        "revision": None,
        "inference_mode": True,
        "r": lora.rank,
        "lora_alpha": lora.lora_alpha,
        "use_rslora": lora.use_rslora,
        "lora_dropout": lora.dropout,
        "target_modules": sorted(model.modules),
        "modules_to_save": modules_to_save(model) or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
    }


def tensors_to_bytes(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of ``tensors`` (moved to CPU, made contiguous)."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    data: bytes = st_save(cpu, metadata=metadata)
    return data


def tensors_from_bytes(data: bytes) -> dict[str, Tensor]:
    """Tensors from safetensors bytes (never pickle)."""
    tensors: dict[str, Tensor] = st_load(data)
    return tensors
