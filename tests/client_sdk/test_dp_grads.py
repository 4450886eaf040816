"""Per-example gradients for DP-SGD (``LinearGradSampler``) equal one-example backward passes on
the real models: MiniLM with LoRA (and SDFLoRA's second adapter) and a tiny Llama, on padded
micro-batches; the clipped sum DP-SGD builds from them is the sum of clipped brute-force
gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fedlora_client import protocol as p
from fedlora_client._adapters import build_peft_model
from fedlora_client._data import EncodedData, encode_data
from fedlora_client._dp_grads import LinearGradSampler
from fedlora_client._errors import PrivacyError
from fedlora_client._model import inspect_model, load_base_model, load_tokenizer
from fedlora_client._privacy import DPSGD, secure_generator
from fedlora_client._training import micro_batches, per_example_loss
from tests.client_sdk.conftest import lora_tensors, method_task
from tests.client_sdk.fake_server import FakeServer

WORDS = ["good", "great", "bad", "awful", "fine", "poor", "dull", "lovely"]
CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ],
)


def _records(task: p.TaskType, n: int) -> list[dict[str, object]]:
    """Texts of 1 to 16 words, so every micro-batch is padded."""
    texts = [" ".join(WORDS[(i * 3 + j) % 8] for j in range(1 + (i * 5) % 16)) for i in range(n)]
    if task is p.TaskType.SEQ_CLS:
        return [{"text": t, "label": i % 2} for i, t in enumerate(texts)]
    return [{"prompt": f"say {i}", "response": t} for i, t in enumerate(texts)]


def _model(path: Path, spec: p.ModelSpec, task: p.TaskType, method: str,
           dtype: torch.dtype = torch.float32,
           device: str = "cpu") -> tuple[nn.Module, list[nn.Parameter]]:  # fmt: skip
    plan = method_task(FakeServer(), spec, task, method).plan
    base = load_base_model(path, task, dtype=dtype, device=device)
    model: nn.Module = build_peft_model(base, plan, lora_tensors(spec, 4, seed=1, zero_b=False))
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    return model, params


def _one_at_a_time(model: nn.Module, params: list[nn.Parameter], data: EncodedData,
                   indices: list[int]) -> dict[int, list[torch.Tensor]]:  # fmt: skip
    out: dict[int, list[torch.Tensor]] = {}
    for i in indices:
        model.zero_grad(set_to_none=True)
        per_example_loss(model, _on(data.batch([i]), model), data.task_type).sum().backward()
        out[i] = [torch.zeros_like(q) if q.grad is None else q.grad.float().clone() for q in params]
    model.zero_grad(set_to_none=True)
    return out


def _on(batch: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def _check(model: nn.Module, params: list[nn.Parameter], data: EncodedData, *,
           physical: int | None, rtol: float, atol: float) -> None:  # fmt: skip
    indices = list(range(len(data)))
    expected = _one_at_a_time(model, params, data, indices)
    norms = {i: float(sum(g.double().pow(2).sum() for g in expected[i]) ** 0.5) for i in indices}
    clip = sorted(norms.values())[len(indices) // 2]  # clips about half of the examples
    step = DPSGD(params, [], clip_norm=clip, noise_multiplier=0.0,
                 expected_batch_size=len(indices), generator=secure_generator(0))  # fmt: skip
    lengths = [len(row) for row in data.input_ids]
    parts = micro_batches(indices, lengths, physical)
    assert physical is None or len(parts) > 1
    padded = False
    sampler = LinearGradSampler(model)
    try:
        for part in parts:
            batch = _on(data.batch(part), model)
            padded = padded or bool((batch["attention_mask"] == 0).any())
            per_example_loss(model, batch, data.task_type).sum().backward()
            for name, q in enumerate(params):
                sample = q.grad_sample  # type: ignore[attr-defined]
                assert sample.dtype == torch.float32
                assert sample.device == q.device
                assert sample.shape == (len(part), *q.shape)
                for row, i in enumerate(part):
                    torch.testing.assert_close(sample[row], expected[i][name], rtol=rtol, atol=atol)
            got = step.per_example_norms()
            want = torch.tensor([norms[i] for i in part], dtype=torch.float32, device=got.device)
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
            step.accumulate()
        step.apply(len(indices))
    finally:
        sampler.close()
    assert padded
    for name, q in enumerate(params):
        clipped = sum(expected[i][name] * min(1.0, clip / (norms[i] + 1e-6)) for i in indices)
        assert isinstance(clipped, torch.Tensor)
        assert q.grad is not None
        torch.testing.assert_close(q.grad.float(), clipped / len(indices), rtol=rtol, atol=atol)


@pytest.mark.parametrize("method", ["fedavg", "sdflora"])
@pytest.mark.parametrize("physical", [None, 3])
def test_minilm_lora_per_example_gradients_equal_one_example_backward(
    minilm: Path, method: str, physical: int | None
) -> None:
    layers = ("0.attention.self.query", "0.attention.output.dense", "5.attention.self.value")
    spec = inspect_model(minilm, p.TaskType.SEQ_CLS, [f"bert.encoder.layer.{m}" for m in layers])
    model, params = _model(minilm, spec, p.TaskType.SEQ_CLS, method)
    assert len(params) == 2 * 3 * (2 if method == "sdflora" else 1) + 2  # + head weight, bias
    data = encode_data(_records(p.TaskType.SEQ_CLS, 7), "seq_cls", load_tokenizer(minilm),
                       max_seq_len=32)  # fmt: skip
    _check(model, params, data, physical=physical, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("task", [p.TaskType.CAUSAL_LM, p.TaskType.SEQ_CLS])
def test_tiny_llama_per_example_gradients_equal_one_example_backward(
    tiny_llama: Path, task: p.TaskType, device: str
) -> None:
    spec = inspect_model(tiny_llama, task, ["q_proj", "v_proj", "o_proj"])
    model, params = _model(tiny_llama, spec, task, "fedavg", device=device)
    data = encode_data(_records(task, 7), task, load_tokenizer(tiny_llama), max_seq_len=32)
    _check(model, params, data, physical=3, rtol=1e-4, atol=1e-6)
    assert all(q.grad is not None and q.grad.device == q.device for q in params)


@pytest.mark.parametrize("task", [p.TaskType.CAUSAL_LM, p.TaskType.SEQ_CLS])
def test_bfloat16_model_gets_float32_per_example_gradients(
    tiny_llama: Path, task: p.TaskType
) -> None:
    spec = inspect_model(tiny_llama, task, ["q_proj", "v_proj"])
    model, params = _model(tiny_llama, spec, task, "fedavg", torch.bfloat16)
    # PEFT keeps LoRA factors in float32 over a bfloat16 base; a head stays bfloat16
    assert any(q.dtype == torch.bfloat16 for q in model.parameters() if not q.requires_grad)
    assert any(q.dtype == torch.bfloat16 for q in params) == (task is p.TaskType.SEQ_CLS)
    data = encode_data(_records(task, 5), task, load_tokenizer(tiny_llama), max_seq_len=32)
    # bfloat16 one-example gradients carry ~3 significant digits
    _check(model, params, data, physical=2, rtol=3e-2, atol=3e-3)


def test_no_record_without_grad_or_in_eval_and_none_after_close() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    sampler = LinearGradSampler(model)
    x = torch.randn(5, 4)
    with torch.no_grad():
        model(x)
    model.eval()
    model(x).sum().backward()
    assert all(getattr(q, "grad_sample", None) is None for q in model.parameters())
    model.train()
    model(x).sum().backward()
    assert all(q.grad_sample.shape == (5, *q.shape) for q in model.parameters())  # type: ignore[attr-defined]
    sampler.close()
    for q in model.parameters():
        q.grad_sample = None  # type: ignore[attr-defined]
    model(x).sum().backward()
    assert all(q.grad_sample is None for q in model.parameters())  # type: ignore[attr-defined]


def test_a_trainable_tensor_outside_a_linear_layer_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(PrivacyError, match=r"'1\.weight' is not one"):
        LinearGradSampler(model)
    model[1].requires_grad_(False)
    LinearGradSampler(model).close()  # only the Linear layer is trained: accepted
