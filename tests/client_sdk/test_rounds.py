"""One full round per method's plan shape, through the client routes, on both test models.

Each round: memberships + fingerprint report, long-poll, streamed hash-checked download, PEFT
build per plan, local training with DP, resumable upload, report. The server side checks the
upload holds exactly ``plan.upload_shapes()``, finite, with the manifest the contract requires.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load

from fedlora_client import FedloraClient, Participant, participate
from fedlora_client import protocol as p
from fedlora_client._adapters import TRAINED, adapter_tensors, build_peft_model
from fedlora_client._credentials import Credentials
from fedlora_client._model import load_base_model
from tests.client_sdk.conftest import (
    METHODS,
    cls_records,
    lm_records,
    lora_tensors,
    membership,
    method_task,
)
from tests.client_sdk.fake_server import API_KEY, FakeServer

DP_OF = {
    "fedavg": p.DPMode.NONE,
    "hetlora": p.DPMode.SAMPLE,
    "flora": p.DPMode.CLIENT,
    "flexlora": p.DPMode.SAMPLE,
    "fslora": p.DPMode.CLIENT,
    "sdflora": p.DPMode.CLIENT,
    "prelort": p.DPMode.SAMPLE,
}


def make_client(server: FakeServer, state: Path) -> FedloraClient:
    creds = Credentials("http://fedlora.test", "c1", "o1", API_KEY)
    return FedloraClient(creds, state_dir=state, transport=server.transport())


def _check_upload(server: FakeServer, task: p.TaskAssignment) -> dict[str, torch.Tensor]:
    tensors = load(server.accepted[task.task_id])
    assert {k: tuple(v.shape) for k, v in tensors.items()} == task.plan.upload_shapes()
    assert all(bool(torch.isfinite(v).all()) for v in tensors.values())
    manifest = next(u.manifest for u in server.uploads.values() if u.task_id == task.task_id)
    assert manifest.lora == task.plan.lora
    assert manifest.base_model_fingerprint == task.plan.model.fingerprint
    assert manifest.num_examples == 24
    assert (manifest.epsilon_spent > 0) == (task.plan.dp.mode is not p.DPMode.NONE)
    assert server.reports[task.task_id]["examples_seen"] > 0
    return tensors


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_name", ["tiny_llama", "minilm"])
def test_one_round_per_method(
    method: str, model_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    model_dir: Path = request.getfixturevalue(model_name)
    llama = model_name == "tiny_llama"
    spec: p.ModelSpec = request.getfixturevalue("llama_spec" if llama else "minilm_spec")
    task_type = p.TaskType.CAUSAL_LM if llama else p.TaskType.SEQ_CLS
    server = FakeServer(memberships=[membership(spec, task_type)])
    task = method_task(server, spec, task_type, method, dp=DP_OF[method])
    server.tasks.append(task)
    with make_client(server, tmp_path) as client:
        data = lm_records() if llama else cls_records()
        participant = Participant(client, model_dir, data, progress=False, noise_seed=0,
                                  eval_data=None if llama else cls_records(8))  # fmt: skip
        assert participate(participant, wait=0, stop_when_idle=True) == 1
    assert server.fingerprints == {"f1": spec.fingerprint}
    if not llama:  # local evaluation of the trained model is reported with the metrics
        assert 0.0 <= server.reports[task.task_id]["eval_accuracy"] <= 1.0
        assert server.reports[task.task_id]["eval_loss"] > 0
    tensors = _check_upload(server, task)
    private = tmp_path / "private" / "f1.safetensors"
    assert private.is_file() == (method == "sdflora")
    if method == "sdflora":  # the private module stays home: not in the upload
        kept = load(private.read_bytes())
        assert {v.shape[0] for k, v in kept.items() if "lora_A" in k} == {2}
        assert {v.shape[0] for k, v in tensors.items() if "lora_A" in k} == {4}


def test_hetlora_start_is_rescaled_to_the_plan_scale(
    tiny_llama: Path, llama_spec: p.ModelSpec
) -> None:
    server = FakeServer()
    task = method_task(server, llama_spec, p.TaskType.CAUSAL_LM, "fedavg")
    plan = task.plan.model_copy(update={
        "lora": p.LoraSpec(rank=2, lora_alpha=4),  # scale 2
        "start": task.plan.start.model_copy(update={"lora": p.LoraSpec(rank=4, lora_alpha=16)}),
    })  # fmt: skip
    start = lora_tensors(llama_spec, 4, seed=1, zero_b=False)
    model = build_peft_model(load_base_model(tiny_llama, "causal_lm"), plan, start)
    got = adapter_tensors(model, TRAINED)
    key_a, key_b = (
        p.lora_a_key("model.layers.0.self_attn.q_proj"),
        p.lora_b_key("model.layers.0.self_attn.q_proj"),
    )
    torch.testing.assert_close(got[key_a], start[key_a][:2])
    torch.testing.assert_close(got[key_b], start[key_b][:, :2] * 2.0)  # 4 / 2: same s * B * A


def test_flora_merges_the_stacked_adapter_into_the_base(
    tiny_llama: Path, llama_spec: p.ModelSpec
) -> None:
    server = FakeServer()
    task = method_task(server, llama_spec, p.TaskType.CAUSAL_LM, "flora")
    merge = lora_tensors(llama_spec, 6, seed=7, zero_b=False, head=False)
    start = lora_tensors(llama_spec, 4, seed=1)
    base = load_base_model(tiny_llama, "causal_lm")
    module = "model.layers.1.self_attn.q_proj"
    w0 = base.get_submodule(module).weight.detach().clone()
    model = build_peft_model(base, task.plan, start, merge=merge)
    merged = model.base_model.model.get_submodule(module).base_layer.weight
    expected = w0 + 2.0 * merge[p.lora_b_key(module)] @ merge[p.lora_a_key(module)]
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-6)


def test_prelort_level_below_rank_leaves_the_tail_untouched(
    tiny_llama: Path, llama_spec: p.ModelSpec, tmp_path: Path
) -> None:
    from fedlora_client._data import encode_data
    from fedlora_client._model import load_tokenizer
    from fedlora_client._training import train_round

    server = FakeServer()
    task = method_task(server, llama_spec, p.TaskType.CAUSAL_LM, "flexlora", steps=3)
    plan = task.plan.model_copy(update={"nested_truncations": [2]})
    start = lora_tensors(llama_spec, 4, seed=1, zero_b=False)
    model = build_peft_model(load_base_model(tiny_llama, "causal_lm"), plan, start)
    data = encode_data(lm_records(), "causal_lm", load_tokenizer(tiny_llama), max_seq_len=32)
    result = train_round(model, plan, data, progress=True, noise_seed=0)  # with the rich bar
    for module in llama_spec.modules:
        a, b = result.tensors[p.lora_a_key(module)], result.tensors[p.lora_b_key(module)]
        torch.testing.assert_close(a[2:], start[p.lora_a_key(module)][2:])
        torch.testing.assert_close(b[:, 2:], start[p.lora_b_key(module)][:, 2:])
        assert not torch.equal(a[:2], start[p.lora_a_key(module)][:2])


@pytest.mark.parametrize("dp", [p.DPMode.NONE, p.DPMode.SAMPLE])
def test_hetlora_tail_penalty_shrinks_the_tail_it_names(
    dp: p.DPMode, tiny_llama: Path, llama_spec: p.ModelSpec
) -> None:
    from fedlora_client._adapters import tail_norm
    from fedlora_client._data import encode_data
    from fedlora_client._model import load_tokenizer
    from fedlora_client._training import train_round

    server = FakeServer()
    task = method_task(server, llama_spec, p.TaskType.CAUSAL_LM, "hetlora", dp=dp, steps=6)
    start = lora_tensors(llama_spec, 2, seed=1, zero_b=False)
    data = encode_data(lm_records(), "causal_lm", load_tokenizer(tiny_llama), max_seq_len=32)
    training = task.plan.training.model_copy(update={"learning_rate": 0.01})
    tails = {}
    for weight in (None, 5.0):
        penalty = None if weight is None else p.TailPenalty(keep=1, weight=weight)
        plan = task.plan.model_copy(update={"tail_penalty": penalty, "training": training})
        model = build_peft_model(load_base_model(tiny_llama, "causal_lm"), plan, start)
        result = train_round(model, plan, data, progress=False, noise_seed=0)
        tails[weight] = float(tail_norm(result.tensors, llama_spec.modules, 1))
        assert ("tail_norm" in result.metrics) == (weight is not None)
    before = float(tail_norm(start, llama_spec.modules, 1))
    assert tails[5.0] < 0.9 * before  # the penalty pulls the tail in
    assert tails[5.0] < 0.9 * tails[None]  # and training alone does not


def test_sdflora_private_module_persists_across_rounds(
    tiny_llama: Path, llama_spec: p.ModelSpec, tmp_path: Path
) -> None:
    server = FakeServer(memberships=[membership(llama_spec, p.TaskType.CAUSAL_LM)])
    for i in (1, 2):
        server.tasks.append(
            method_task(server, llama_spec, p.TaskType.CAUSAL_LM, "sdflora", task_id=f"t{i}")
        )
    with make_client(server, tmp_path) as client:
        participant = Participant(client, tiny_llama, lm_records(), progress=False, noise_seed=0)
        participate(participant, wait=0, max_rounds=1)
        after_first = load((tmp_path / "private" / "f1.safetensors").read_bytes())
        task = participant.next_task(0)
        assert task is not None
        model = participant.start_model(task)
        loaded = adapter_tensors(model, "private")
    assert after_first.keys() == loaded.keys()
    for key in after_first:
        torch.testing.assert_close(loaded[key], after_first[key])
    assert any(bool(v.abs().sum() > 0) for k, v in loaded.items() if "lora_B" in k)  # trained


@pytest.mark.parametrize("mode", [p.DPMode.CLIENT, p.DPMode.SAMPLE])
def test_own_training_loop_with_start_model_and_submit_model(
    mode: p.DPMode, tiny_llama: Path, llama_spec: p.ModelSpec, tmp_path: Path
) -> None:
    from fedlora_client import PrivacyError

    server = FakeServer(memberships=[membership(llama_spec, p.TaskType.CAUSAL_LM)])
    server.tasks.append(method_task(server, llama_spec, p.TaskType.CAUSAL_LM, "fedavg", dp=mode))
    with make_client(server, tmp_path) as client:
        participant = Participant(client, tiny_llama, lm_records(), progress=False, noise_seed=0)
        task = participant.next_task(0)
        assert task is not None
        model = participant.start_model(task)  # a PeftModel, ready for the user's loop
        params = [q for q in model.parameters() if q.requires_grad]
        ids = torch.randint(0, 1000, (2, 8))
        model(input_ids=ids, labels=ids).loss.backward()
        torch.optim.SGD(params, lr=0.1).step()
        if mode is p.DPMode.SAMPLE:
            with pytest.raises(PrivacyError, match="during training"):
                participant.submit_model(task, model, num_examples=24, metrics={})
            return
        session = participant.submit_model(
            task, model, num_examples=24, metrics={"train_loss": 1.0}
        )
    assert session.status == "accepted"
    manifest = next(iter(server.uploads.values())).manifest
    assert manifest.epsilon_spent > 0
    assert {k: tuple(v.shape) for k, v in load(server.accepted["t1"]).items()} == (
        task.plan.upload_shapes()
    )
