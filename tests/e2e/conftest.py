"""Real processes on real services: uvicorn, a Celery worker on Redis, Postgres, SDK clients.

Each test module gets its own freshly migrated Postgres database and its own Celery queue on
the shared Redis, so nothing leaks between runs. Postgres or Redis being down fails the tests.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from api.config import Settings
from api.migrate import upgrade_head
from fedlora.admin_client import AdminClient
from fedlora.local import LocalPlatform, ManagedProcess, sdk_argv
from tests.api.conftest import create_pg_database, drop_pg_database, redis_url
from tests.tiny_models import write_tiny_llama

ROOT = Path(__file__).resolve().parents[2]
ADMIN = ("admin@e2e.test", "e2e-password-0123456789")


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    url = create_pg_database("fedlora_e2e")
    upgrade_head(Settings(database_url=url))
    yield url
    drop_pg_database(url)


@pytest.fixture(scope="module")
def redis_ok() -> str:
    url = redis_url()
    try:
        redis.Redis.from_url(url).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {url} is unreachable: {exc}", False)
    return url


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def llama_spec(tiny_llama: Path) -> dict[str, Any]:
    """The tiny Llama's ModelSpec (fingerprint, q/v projection shapes) as the API takes it."""
    from fedlora_client import inspect_model

    spec = inspect_model(tiny_llama, "causal_lm", ["q_proj", "v_proj"], 2)
    return spec.model_dump(mode="json")


@dataclass
class Stack:
    """A running platform plus helpers to add SDK client processes."""

    platform: LocalPlatform
    admin: AdminClient
    env: dict[str, str]
    work: Path
    clients: list[ManagedProcess] = field(default_factory=list)

    def client(self, name: str, model: Path, records: list[dict[str, Any]], rounds: int) -> str:
        """Enroll a real ``fedlora-client`` process; returns its client id (it keeps running)."""
        directory = self.work / name
        directory.mkdir(parents=True)
        with (directory / "train.jsonl").open("w") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
        (directory / "client.toml").write_text(
            'credentials_path = "credentials.json"\nstate_dir = "state"\n\n'
            f'[model]\npath = {json.dumps(str(model))}\ndevice = "cpu"\n\n'
            '[data]\npath = "train.jsonl"\n\n'
            f"[run]\nwait_seconds = 2\nmax_rounds = {rounds}\n"
        )
        org = self.admin.create_organization(f"org-{name}")
        token = self.admin.create_join_token(org)
        enroll = ManagedProcess(
            f"{name}-enroll",
            sdk_argv("enroll", "--server", self.platform.url, "--token", token, "--name", name,
                 "--credentials", str(directory / "credentials.json")),
            self.env, self.work / "logs",
        )  # fmt: skip
        assert enroll.proc.wait(timeout=120) == 0, enroll.log_path.read_text()
        enroll.stop()
        client_id = str(json.loads((directory / "credentials.json").read_text())["client_id"])
        self.clients.append(
            ManagedProcess(
                name,
                sdk_argv("run", "--config", str(directory / "client.toml")),
                self.env,
                self.work / "logs",
            )
        )
        return client_id

    def wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            for proc in [self.platform.api, self.platform.worker]:
                if proc is not None:
                    proc.check_alive()
            for proc in self.clients:
                proc.check_alive(finished_ok=True)
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {p.name}\n{p.log_path.read_text()[-3000:]}"
                    for p in [*self.clients, self.platform.worker]
                    if p is not None
                )
                pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")
            time.sleep(0.5)


def platform_env(pg_url: str, redis: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "FEDLORA_DATABASE_URL": pg_url,
        "FEDLORA_BROKER_URL": redis,
        "FEDLORA_DATA_DIR": str(data_dir),
        "FEDLORA_AGGREGATION_QUEUE": f"e2e-{uuid.uuid4().hex[:8]}",
        "FEDLORA_BOOTSTRAP_ADMIN_EMAIL": ADMIN[0],
        "FEDLORA_BOOTSTRAP_ADMIN_PASSWORD": ADMIN[1],
        "FEDLORA_LONG_POLL_SECONDS": "2",
        "FEDLORA_SWEEP_INTERVAL_SECONDS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **extra,
    }


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def start(env: dict[str, str], *, worker: bool = True) -> Stack:
        platform = LocalPlatform(env, log_dir=tmp_path / "logs", worker=worker).start()
        admin = AdminClient(platform.url)
        admin.login(*ADMIN)
        stack = Stack(platform, admin, env, tmp_path)
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        for proc in stack.clients:
            proc.stop()
        stack.admin.close()
        stack.platform.stop()
