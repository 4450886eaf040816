"""A real ``fedlora worker --beat`` process reports to the database; the API follows it.

No worker: ``/healthz/workers`` answers 503 "no worker has ever reported". The worker starts:
its Celery signals register a worker and a scheduler heartbeat, and the check turns 200. The
worker stops (SIGTERM, a clean shutdown): the check is 503 again at once, saying since when.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack, platform_env

pytestmark = pytest.mark.slow


def _health(stack: Stack) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"{stack.platform.url}/healthz/workers", timeout=5)
    return r.status_code, r.json()


def _until(check: Callable[[], bool], timeout: float, what: str, stack: Stack) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if stack.platform.worker is not None:
            stack.platform.worker.check_alive()
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {_health(stack)}"
        time.sleep(0.3)


def test_the_api_follows_a_real_worker_start_and_stop(
    stack_factory: Callable[..., Stack], pg_url: str, redis_ok: str, tmp_path: Path
) -> None:
    env = platform_env(pg_url, redis_ok, tmp_path / "data", FEDLORA_WORKER_HEARTBEAT_SECONDS="1")
    stack = stack_factory(env, worker=False)
    code, body = _health(stack)
    assert (code, body["status"], body["last_worker_seen_at"]) == (503, "no_worker", None)
    assert api_ready(stack)["workers"]["status"] == "no_worker"  # /readyz: 200, and says so

    worker = stack.platform.start_worker()
    _until(lambda: _health(stack)[0] == 200, 120, "the worker and scheduler to report", stack)
    listed = stack.admin._call("GET", "/workers")
    kinds = {p["kind"] for p in listed["processes"] if p["alive"]}
    assert kinds == {"worker", "scheduler"}
    assert env["FEDLORA_AGGREGATION_QUEUE"] in next(
        p["queues"] for p in listed["processes"] if p["kind"] == "worker"
    )

    worker.stop()  # SIGTERM: Celery's warm shutdown records the stop
    code, body = _health(stack)
    assert (code, body["status"]) == (503, "no_worker")
    assert body["last_worker_seen_at"] is not None
    assert body["message"].startswith("No aggregation worker has reported since ")


def api_ready(stack: Stack) -> dict[str, Any]:
    r = httpx.get(f"{stack.platform.url}/readyz", timeout=5)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body
