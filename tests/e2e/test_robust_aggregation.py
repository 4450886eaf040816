"""A hostile organization in a real federation (issue #14): uvicorn + a Celery worker on Redis +
Postgres, two honest ``fedlora-client`` processes and one attacker over HTTP.

Every round the attacker claims 1e9 examples and uploads its start plus 1000x a random change.
Five FedAvg federations run at once (no server optimizer, so the aggregate is what is
published): the honest pair alone, twice (each federation draws its own initial A, so two
honest runs differ by their seeds alone: the baseline); the pair with the attacker under the
default defences; under FedAvg's median rule (its admin also caps the attacker's examples); and
with every defence off. The distance of each final global update ``s B A`` to the first honest
run's, relative to that one's norm, is printed. Stated bound: a defended run is no further from
the honest run than three times the distance between the two honest runs; the undefended one is more
than 1000 times the honest run's norm away.
"""

from __future__ import annotations

import hashlib
import math
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import load as load_np
from safetensors.numpy import save as save_np

from fedlora_client.protocol import TaskAssignment, UploadManifest
from tests.e2e.conftest import Stack, platform_env
from tests.e2e.test_platform import _federation, _records

pytestmark = pytest.mark.slow
ROUNDS = 2
OFF = {"max_client_weight_share": None, "norm_bound": "none"}


def _attack(url: str, key: str, tasks: int, stop: threading.Event) -> None:
    """Lease every task offered, upload start + 1000 x noise claiming 1e9 examples."""
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as h:
        done = 0
        while done < tasks and not stop.is_set():
            r = h.get("/api/v1/client/tasks/next", params={"wait": 2})
            if r.status_code == 204:
                continue
            assert r.status_code == 200, r.text
            task = TaskAssignment.model_validate(r.json())
            if task.plan.evaluate_only:  # the pass after the last round: nothing to poison
                continue
            start = load_np(h.get(f"/api/v1/client/tasks/{task.task_id}/start-adapter").content)
            body = save_np(
                {
                    k: start[k] + 1000.0 * rng.normal(0, 0.01, s).astype(np.float32)
                    for k, s in task.plan.upload_shapes().items()
                }
            )
            manifest = UploadManifest(
                task_id=task.task_id,
                base_model_fingerprint=task.plan.model.fingerprint,
                lora=task.plan.lora,
                sha256=hashlib.sha256(body).hexdigest(),
                size=len(body),
                num_examples=1_000_000_000,
            )
            r = h.post(
                f"/api/v1/client/tasks/{task.task_id}/uploads",
                json=manifest.model_dump(mode="json"),
                headers={"Idempotency-Key": uuid.uuid4().hex},
            )
            assert r.status_code == 201, r.text
            r = h.patch(
                f"/api/v1/client/uploads/{r.json()['upload_id']}",
                content=body,
                headers={"Upload-Offset": "0"},
            )
            assert r.status_code == 200, r.text
            done += 1


def _products(path: Path) -> dict[str, np.ndarray]:
    """The adapter's effective update ``s B A`` per module (PEFT keys)."""
    import json

    config = json.loads((path / "adapter_config.json").read_text())
    tensors = load_np((path / "adapter_model.safetensors").read_bytes())
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / (math.sqrt(r) if config.get("use_rslora") else r)
    return {
        k.replace(".lora_A.weight", ""): scale * tensors[k.replace("lora_A", "lora_B")] @ a
        for k, a in tensors.items()
        if k.endswith("lora_A.weight")
    }


def _relative_distance(x: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    num = sum(float(((x[k] - ref[k]) ** 2).sum()) for k in ref)
    den = sum(float((ref[k] ** 2).sum()) for k in ref)
    return math.sqrt(num / den)


def test_a_poisoning_overweighted_client_cannot_steer_the_published_adapters(
    stack_factory: Callable[..., Stack],
    pg_url: str,
    redis_ok: str,
    tiny_llama: Path,
    llama_spec: dict[str, Any],
    tmp_path: Path,
) -> None:
    stack = stack_factory(platform_env(pg_url, redis_ok, tmp_path / "platform"))
    common = {"server_optimizer": {"name": "none"}, "global_rank": 4, "num_rounds": ROUNDS}
    feds = {
        "honest": _federation("rb-honest", "fedavg", llama_spec, **common,
                              clients_per_round=2, min_clients=2),
        "defended": _federation("rb-defended", "fedavg", llama_spec, **common,
                                clients_per_round=3, min_clients=3),
        "honest-2": _federation("rb-honest-2", "fedavg", llama_spec, **common,
                                clients_per_round=2, min_clients=2),
        "median": _federation("rb-median", "fedavg", llama_spec, **common,
                              clients_per_round=3, min_clients=3,
                              robust_aggregation={"rule": "median"}),
        "undefended": _federation("rb-undefended", "fedavg", llama_spec, **common,
                                  clients_per_round=3, min_clients=3, robust_aggregation=OFF),
    }  # fmt: skip
    ids = {name: stack.admin.create_federation(body) for name, body in feds.items()}
    for i in range(2):
        cid = stack.client(f"h{i}", tiny_llama, _records(i), rounds=len(feds) * ROUNDS)
        for fid in ids.values():
            stack.admin.add_member(fid, cid, 4)
    org = stack.admin.create_organization("org-attacker")
    r = httpx.post(
        f"{stack.platform.url}/api/v1/enroll",
        json={"join_token": stack.admin.create_join_token(org), "name": "attacker"},
    )
    assert r.status_code == 201, r.text
    key = r.json()["api_key"]
    for name in ("defended", "median", "undefended"):
        # the median run's admin also caps the attacker at the honest clients' 24 examples
        cap = 24 if name == "median" else None
        stack.admin.add_member(ids[name], r.json()["client_id"], 4, max_examples=cap)
        r2 = httpx.put(
            f"{stack.platform.url}/api/v1/client/memberships/{ids[name]}",
            json={"fingerprint": llama_spec["fingerprint"]},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r2.status_code == 200, r2.text
    stack.wait(
        lambda: all(
            m["fingerprint"] is not None for fid in ids.values() for m in stack.admin.members(fid)
        ),
        180,
        "clients to report their model fingerprint",
    )
    stop = threading.Event()
    attacker = threading.Thread(
        target=_attack, args=(stack.platform.url, key, 3 * ROUNDS, stop), daemon=True
    )
    attacker.start()
    try:
        for fid in ids.values():
            stack.admin.action(fid, "start")
        stack.wait(
            lambda: all(stack.admin.federation(f)["status"] == "completed" for f in ids.values()),
            900,
            "the five federations to complete",
        )
    finally:
        stop.set()
        attacker.join(timeout=30)

    final = {}
    for name, fid in ids.items():
        adapters = sorted(stack.admin.adapters(fid), key=lambda a: a["round_number"])
        assert len(adapters) == ROUNDS, name
        if name == "defended":
            for a in adapters:  # the attacker's update was used, but bounded
                assert len(a["update_ids"]) == 3
                assert a["metrics"]["norm_bounded_updates"] == 1.0
                assert a["metrics"]["max_update_share"] == pytest.approx(0.5)
        final[name] = _products(stack.admin.download_adapter(adapters[-1]["id"], tmp_path / name))
    d = {name: _relative_distance(final[name], final["honest"]) for name in final}
    print("relative distance to the honest-only run: " + ", ".join(
        f"{name} {value:.3f}" for name, value in d.items() if name != "honest"))  # fmt: skip
    # the honest runs differ by their seeds alone (each federation draws its own init)
    assert d["defended"] < 3 * d["honest-2"]  # the attacker's pull: at most 0.5 x 5 medians
    assert d["median"] < 3 * d["honest-2"]
    assert d["undefended"] > 1000
