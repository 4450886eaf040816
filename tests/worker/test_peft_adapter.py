"""The published global adapter loads with ``PeftModel.from_pretrained`` on tiny real models."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from fedlora_client.protocol import (
    PEFT_PREFIX,
    STRATEGY_NAMES,
    ModelSpec,
    TaskType,
    lora_a_key,
    lora_b_key,
)
from tests.worker.conftest import FINGERPRINT, fake_updates, make_ctx, make_strategy
from worker.strategies.base import AggregationResult, PlanContext


def _llama() -> tuple[torch.nn.Module, ModelSpec]:
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    modules = {}
    for i in range(2):
        modules[f"model.layers.{i}.self_attn.q_proj"] = (32, 32)
        modules[f"model.layers.{i}.self_attn.v_proj"] = (16, 32)  # 2 kv heads x 8
    return model, ModelSpec(fingerprint=FINGERPRINT, modules=modules)


def _bert() -> tuple[torch.nn.Module, ModelSpec]:
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=64,
        num_labels=3,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    modules = {
        f"bert.encoder.layer.{i}.attention.self.{n}": (32, 32)
        for i in range(2)
        for n in ("query", "value")
    }
    head = {f"{PEFT_PREFIX}classifier.weight": [3, 32], f"{PEFT_PREFIX}classifier.bias": [3]}
    return model, ModelSpec(fingerprint=FINGERPRINT, modules=modules, extra_trainable=head)


def _aggregate(name: str, spec: ModelSpec, task: TaskType) -> tuple[PlanContext, AggregationResult]:
    ctx = make_ctx(name, (2, 4, 4), global_rank=4, model=spec)
    ctx = dataclasses.replace(ctx, task_type=task)
    strategy = make_strategy(ctx, name)
    state = strategy.init_state(ctx)
    return ctx, strategy.aggregate(state, ctx, fake_updates(strategy.plan(state, ctx)))


def _save(result: AggregationResult, ctx: PlanContext, path: Path) -> None:
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps(result.adapter_config(ctx, "tiny")))
    save_file(result.adapter, str(path / "adapter_model.safetensors"))


def _check_loaded(peft_model: PeftModel, result: AggregationResult, ctx: PlanContext) -> None:
    params = dict(peft_model.named_parameters())
    for module in ctx.model.modules:
        a = params[f"base_model.model.{module}.lora_A.default.weight"]
        b = params[f"base_model.model.{module}.lora_B.default.weight"]
        torch.testing.assert_close(a.detach(), result.adapter[lora_a_key(module)])
        torch.testing.assert_close(b.detach(), result.adapter[lora_b_key(module)])
        layer = peft_model.get_submodule(f"base_model.model.{module}")
        assert layer.scaling["default"] == pytest.approx(result.lora.scaling)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_causal_lm_adapter_loads_with_peft(name: str, tmp_path: Path) -> None:
    model, spec = _llama()
    ctx, result = _aggregate(name, spec, TaskType.CAUSAL_LM)
    _save(result, ctx, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(model, str(tmp_path / "adapter"))
    _check_loaded(peft_model, result, ctx)
    out = peft_model(input_ids=torch.tensor([[1, 2, 3]]))
    assert out.logits.shape == (1, 3, 64)


@pytest.mark.parametrize("name", ["flexlora", "flora"])
def test_sequence_classification_adapter_loads_with_its_head(name: str, tmp_path: Path) -> None:
    model, spec = _bert()
    ctx, result = _aggregate(name, spec, TaskType.SEQ_CLS)
    config = result.adapter_config(ctx)
    assert config["modules_to_save"] == ["classifier"]
    _save(result, ctx, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(model, str(tmp_path / "adapter"))
    _check_loaded(peft_model, result, ctx)
    head = peft_model.base_model.model.classifier.modules_to_save["default"]
    torch.testing.assert_close(
        head.weight.detach(), result.adapter[f"{PEFT_PREFIX}classifier.weight"]
    )
    torch.testing.assert_close(head.bias.detach(), result.adapter[f"{PEFT_PREFIX}classifier.bias"])
    out = peft_model(input_ids=torch.tensor([[1, 2, 3]]))
    assert out.logits.shape == (1, 3)
