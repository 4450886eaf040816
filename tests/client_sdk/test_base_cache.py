"""A long-running participant loads its base model once and hands each task a fresh copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedlora_client import Participant
from fedlora_client import _participant as participant_module
from fedlora_client import protocol as p
from tests.client_sdk.conftest import lm_records, membership, method_task
from tests.client_sdk.fake_server import FakeServer
from tests.client_sdk.test_rounds import make_client


def test_base_model_is_loaded_once_and_each_task_gets_a_pristine_copy(
    tiny_llama: Path, llama_spec: p.ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = []
    real = participant_module.load_base_model

    def counting(*args: object, **kwargs: object) -> object:
        loads.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(participant_module, "load_base_model", counting)
    server = FakeServer(memberships=[membership(llama_spec, p.TaskType.CAUSAL_LM)])
    flora = method_task(server, llama_spec, p.TaskType.CAUSAL_LM, "flora")  # merges into base
    server.tasks.append(flora)
    with make_client(server, tmp_path) as client:
        part = Participant(client, tiny_llama, lm_records(), progress=False, noise_seed=0)
        assert part.next_task(0) == flora  # issued: its artifacts can be downloaded
        first = part.start_model(flora)
        second = part.start_model(flora)
        plain = part.base_model(flora.plan)
    assert len(loads) == 1
    module = next(iter(llama_spec.modules))
    merged = first.base_model.model.get_submodule(module).base_layer.weight
    untouched = plain.get_submodule(module).weight
    again = second.base_model.model.get_submodule(module).base_layer.weight
    torch.testing.assert_close(again, merged)  # the merge was applied to a copy each time
    assert not torch.allclose(untouched, merged)  # and the cached model stayed pristine


def test_models_above_the_cache_limit_are_read_each_time(
    tiny_llama: Path, llama_spec: p.ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(participant_module, "BASE_CACHE_BYTES", 0)
    server = FakeServer(memberships=[membership(llama_spec, p.TaskType.CAUSAL_LM)])
    task = method_task(server, llama_spec, p.TaskType.CAUSAL_LM, "fedavg")
    with make_client(server, tmp_path) as client:
        part = Participant(client, tiny_llama, lm_records(), progress=False, noise_seed=0)
        part.base_model(task.plan)
        assert part._base_cache == {}
