"""The CLI's commands and messages, ``run`` from a client.toml, and the SDK's import hygiene."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedlora_client import protocol as p
from fedlora_client._credentials import Credentials
from fedlora_client._run import run
from fedlora_client.cli import app
from tests.client_sdk.conftest import membership, method_task
from tests.client_sdk.fake_server import API_KEY, TOKEN, FakeServer

runner = CliRunner()


def test_inspect_prints_a_valid_model_spec(tiny_llama: Path, llama_spec: p.ModelSpec) -> None:
    result = runner.invoke(
        app, ["inspect", str(tiny_llama), "--target", "q_proj", "--target", "v_proj"]
    )
    assert result.exit_code == 0, result.output
    assert p.ModelSpec.model_validate(json.loads(result.stdout)) == llama_spec


def test_errors_are_one_actionable_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--config", str(tmp_path / "absent.toml")])
    assert result.exit_code == 1
    assert "ConfigError" in result.output
    assert "not found" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 1
    assert "never downloads" in result.output


def test_cuda_out_of_memory_suggests_a_smaller_rank_or_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def oom(*args: object, **kwargs: object) -> int:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("fedlora_client._run.run", oom)
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 1
    assert "smaller rank" in result.output
    assert "batch size" in result.output


def test_enroll_command_writes_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fedlora_client._client as client_module

    server = FakeServer()
    original = client_module.FedloraClient.enroll.__func__  # type: ignore[attr-defined]

    def enroll(cls: type, *args: object, **kwargs: object) -> object:
        return original(cls, *args, transport=server.transport(), **kwargs)

    monkeypatch.setattr(client_module.FedloraClient, "enroll", classmethod(enroll))
    path = tmp_path / "creds.json"
    result = runner.invoke(
        app, ["enroll", "--server", "http://x", "--token", TOKEN, "--credentials", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert Credentials.load(path).api_key == API_KEY


def test_run_from_client_toml(tiny_llama: Path, llama_spec: p.ModelSpec, tmp_path: Path) -> None:
    server = FakeServer(memberships=[membership(llama_spec, p.TaskType.CAUSAL_LM)])
    server.tasks.append(
        method_task(server, llama_spec, p.TaskType.CAUSAL_LM, "prelort", dp=p.DPMode.SAMPLE)
    )
    Credentials("http://fedlora.test", "c1", "o1", API_KEY).save(tmp_path / "creds.json")
    (tmp_path / "train.csv").write_text(
        "q,a\n" + "".join(f"what is {i},it is {i}\n" for i in range(12))
    )
    (tmp_path / "client.toml").write_text(
        textwrap.dedent(f"""
        credentials_path = "{tmp_path / "creds.json"}"
        state_dir = "state"
        [model]
        path = "{tiny_llama}"
        [data]
        path = "train.csv"
        eval_path = "train.csv"
        prompt_field = "q"
        response_field = "a"
        [privacy]
        epsilon_budget = 9.0
        [run]
        wait_seconds = 0
        stop_when_idle = true
    """)
    )
    events: list[str] = []
    done = run(tmp_path / "client.toml", transport=server.transport(), progress=False,
               on_event=lambda kind, info: events.append(kind))  # fmt: skip
    assert done == 1
    assert list(server.accepted) == ["t1"]
    assert events == ["task", "trained", "uploaded", "idle"]
    assert (tmp_path / "state" / "privacy_ledger.json").is_file()
    assert server.reports["t1"]["eval_loss"] > 0
    assert server.hardware == p.HardwareProfile(accelerator="cpu")


def test_bad_config_values_name_the_field(tmp_path: Path) -> None:
    from fedlora_client import ClientConfig, ConfigError

    (tmp_path / "c.toml").write_text(
        '[model]\npath = "m"\n[data]\npath = "d"\n[run]\nwait_seconds = -1\n'
    )
    with pytest.raises(ConfigError, match=r"run\.wait_seconds"):
        ClientConfig.load(tmp_path / "c.toml")


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"fastapi", "sqlalchemy", "celery", "api", "worker"}:
            raise ImportError(f"blocked: {name}")
        return None
sys.meta_path.insert(0, Block())
"""


def test_sdk_imports_without_server_dependencies() -> None:
    code = BLOCKER + textwrap.dedent("""
        import fedlora_client
        from fedlora_client import protocol
        assert "torch" not in sys.modules, "protocol must not import torch"
        from fedlora_client import FedloraClient, Participant, participate, train_round
        import fedlora_client.cli
        print("ok", len(fedlora_client.__all__))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_public_names_resolve() -> None:
    import fedlora_client

    for name in fedlora_client.__all__:
        assert getattr(fedlora_client, name) is not None
    with pytest.raises(AttributeError):
        fedlora_client.NoSuchThing  # noqa: B018
