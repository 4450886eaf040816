"""The platform end to end on real processes and real services.

* Every registered strategy completes two rounds with three real ``fedlora-client`` processes
  of ranks 2, 4 and 8 (all seven federations run at once, on uvicorn + a Celery worker on
  Redis + Postgres); each final adapter loads with ``PeftModel.from_pretrained`` and changes
  the model's outputs.
* A worker killed mid-aggregation: the round is still published exactly once, with all its
  updates, by another worker after the sweeper notices the expired claim.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
import torch
from safetensors.numpy import load as load_np
from safetensors.numpy import save as save_np

from api.db import GlobalAdapter, Round, RoundKind, create_db_engine
from fedlora.local import ManagedProcess
from fedlora_client.protocol import STRATEGY_NAMES, TaskAssignment, UploadManifest
from tests.e2e.conftest import Stack, platform_env

pytestmark = pytest.mark.slow
RANKS = (2, 4, 8)
ROUNDS = 2


def _federation(name: str, strategy: str, spec: dict[str, Any], **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "base_model_id": "tiny-llama",
        "task_type": "causal_lm",
        "model": spec,
        "target_modules": ["q_proj", "v_proj"],
        "strategy": strategy,
        "strategy_params": {},
        "global_rank": max(RANKS),
        "num_rounds": ROUNDS,
        "clients_per_round": len(RANKS),
        "min_clients": len(RANKS),
        "round_deadline_seconds": 600,
        "training": {"steps": 2, "batch_size": 4, "learning_rate": 5e-3, "max_seq_len": 16},
        "dp": {"mode": "none"},
    }
    body.update(over)
    return body


def _records(seed: int) -> list[dict[str, Any]]:
    words = ["red", "green", "blue", "gold", "grey", "pink"]
    return [
        {"prompt": f"the colour of item {i} is", "response": f" {words[(i + seed) % 6]}."}
        for i in range(24)
    ]


def test_every_strategy_completes_two_rounds_with_sdk_processes(
    stack_factory: Callable[..., Stack],
    pg_url: str,
    redis_ok: str,
    tiny_llama: Path,
    llama_spec: dict[str, Any],
    tmp_path: Path,
) -> None:
    stack = stack_factory(platform_env(pg_url, redis_ok, tmp_path / "platform"))
    spec = llama_spec
    feds = {
        s: stack.admin.create_federation(_federation(f"e2e-{s}", s, spec)) for s in STRATEGY_NAMES
    }
    total = len(feds) * ROUNDS
    for i, rank in enumerate(RANKS):
        client_id = stack.client(f"c{rank}", tiny_llama, _records(i), rounds=total)
        for fid in feds.values():
            stack.admin.add_member(fid, client_id, rank)
    stack.wait(
        lambda: all(
            m["fingerprint"] is not None for fid in feds.values() for m in stack.admin.members(fid)
        ),
        180,
        "clients to report their model fingerprint",
    )
    for fid in feds.values():
        stack.admin.action(fid, "start")
    stack.wait(
        lambda: all(stack.admin.federation(f)["status"] == "completed" for f in feds.values()),
        900,
        "every federation to complete",
    )

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[101, 2054, 2003, 1996, 3609, 102]])
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_llama)(ids).logits
    for strategy, fid in feds.items():
        adapters = sorted(stack.admin.adapters(fid), key=lambda a: a["round_number"])
        assert [a["round_number"] for a in adapters] == list(range(1, ROUNDS + 1)), strategy
        updates = stack.admin.updates(fid)
        for adapter in adapters:
            round_updates = [u for u in updates if u["id"] in adapter["update_ids"]]
            assert len(round_updates) == len(RANKS), strategy
        final = stack.admin.download_adapter(adapters[-1]["id"], tmp_path / f"final-{strategy}")
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), final)
        with torch.no_grad():
            logits = model(ids).logits
        assert torch.isfinite(logits).all(), strategy
        assert not torch.allclose(logits, base_logits, atol=1e-6), f"{strategy}: no effect"


def _fake_client_upload(url: str, key: str, seed: int) -> None:
    """A minimal client over HTTP: lease, download the start adapter, nudge it, upload."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        deadline = time.monotonic() + 120  # the worker opens the round once it has started
        r = http.get("/api/v1/client/tasks/next", params={"wait": 5})
        while r.status_code == 204 and time.monotonic() < deadline:
            r = http.get("/api/v1/client/tasks/next", params={"wait": 5})
        assert r.status_code == 200, r.text
        task = TaskAssignment.model_validate(r.json())
        start = load_np(http.get(f"/api/v1/client/tasks/{task.task_id}/start-adapter").content)
        rng = np.random.default_rng(seed)
        body = save_np(
            {
                k: start[k] + rng.normal(0, 0.01, s).astype(np.float32)
                for k, s in task.plan.upload_shapes().items()
            }
        )
        manifest = UploadManifest(
            task_id=task.task_id,
            base_model_fingerprint=task.plan.model.fingerprint,
            lora=task.plan.lora,
            sha256=hashlib.sha256(body).hexdigest(),
            size=len(body),
            num_examples=10,
        )
        r = http.post(
            f"/api/v1/client/tasks/{task.task_id}/uploads",
            json=manifest.model_dump(mode="json"),
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert r.status_code == 201, r.text
        r = http.patch(
            f"/api/v1/client/uploads/{r.json()['upload_id']}",
            content=body,
            headers={"Upload-Offset": "0"},
        )
        assert r.status_code == 200, r.text


def test_worker_killed_mid_job_round_is_published_exactly_once(
    stack_factory: Callable[..., Stack],
    pg_url: str,
    redis_ok: str,
    llama_spec: dict[str, Any],
    tmp_path: Path,
) -> None:
    marker = tmp_path / "stalled"
    env = platform_env(
        pg_url,
        redis_ok,
        tmp_path / "platform",
        FEDLORA_AGGREGATION_CLAIM_SECONDS="3",
        FEDLORA_TEST_MARKER=str(marker),
    )
    stack = stack_factory(env, worker=False)  # the first worker is one that stalls
    slow = ManagedProcess(
        "worker-killed", [sys.executable, "-m", "tests.e2e.slow_worker"], env, tmp_path / "logs"
    )
    try:
        _kill_and_recover(stack, slow, marker, llama_spec, pg_url)
    finally:
        slow.stop()


def _kill_and_recover(
    stack: Stack, slow: ManagedProcess, marker: Path, spec: dict[str, Any], pg_url: str
) -> None:
    fid = stack.admin.create_federation(
        _federation("e2e-kill", "flexlora", spec, num_rounds=1, clients_per_round=2, min_clients=2)
    )
    keys = []
    for i in range(2):
        org = stack.admin.create_organization(f"kill-org-{i}")
        r = httpx.post(
            f"{stack.platform.url}/api/v1/enroll",
            json={"join_token": stack.admin.create_join_token(org), "name": f"k{i}"},
        )
        assert r.status_code == 201, r.text
        stack.admin.add_member(fid, r.json()["client_id"], RANKS[i])
        keys.append(r.json()["api_key"])
        r = httpx.put(
            f"{stack.platform.url}/api/v1/client/memberships/{fid}",
            json={"fingerprint": spec["fingerprint"]},
            headers={"Authorization": f"Bearer {r.json()['api_key']}"},
        )
        assert r.status_code == 200, r.text
    stack.admin.action(fid, "start")
    for i, key in enumerate(keys):
        _fake_client_upload(stack.platform.url, key, seed=i)
    stack.wait(marker.exists, 120, "the worker to stall mid-aggregation")
    os.killpg(slow.proc.pid, signal.SIGKILL)
    slow.proc.wait(timeout=30)
    assert stack.admin.adapters(fid) == []  # killed before it could publish

    stack.platform.start_worker("worker-2")  # with the sweeper (beat)
    stack.wait(lambda: stack.admin.federation(fid)["status"] == "completed", 180, "recovery")
    time.sleep(2)  # any duplicate would have had time to publish
    engine = create_db_engine(pg_url)
    try:
        with engine.connect() as conn:
            # the training round (the evaluation pass after it publishes nothing)
            rnd = conn.execute(
                sa.select(Round).where(
                    Round.federation_id == uuid.UUID(fid), Round.kind == RoundKind.TRAINING
                )
            ).one()
            published = conn.execute(
                sa.select(GlobalAdapter).where(GlobalAdapter.round_id == rnd.id)
            ).all()
    finally:
        engine.dispose()
    assert rnd.state == "completed"
    assert rnd.aggregation_attempts >= 2
    assert len(published) == 1
    assert len(published[0].update_ids) == 2
