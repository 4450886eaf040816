"""The worker's jobs against the real API and database (SQLite and Postgres).

A federation runs through the REST API; clients lease tasks, download their start adapters and
upload updates through the client routes; the jobs open, aggregate and publish the rounds. No
Celery here (the jobs are called directly, and enqueued jobs are recorded): the process-level
behaviour (a real worker, a killed worker) is in ``tests/e2e``.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from safetensors.numpy import load as load_np
from safetensors.numpy import save as save_np
from sqlalchemy.orm import Session, sessionmaker

from api.config import Settings
from api.db import Federation, GlobalAdapter, PrivacyLedgerEntry, Round, Task, Update
from api.queue import RecordingEnqueuer
from api.services import rounds
from api.storage import ArtifactStore
from fedlora_client.protocol import STRATEGY_NAMES, ModelSpec, TaskAssignment, UploadManifest
from tests.api.factories import FINGERPRINT
from tests.api.world import Party, enroll, join, make_org
from worker import jobs

MODEL = ModelSpec(
    fingerprint=FINGERPRINT,
    modules={"enc.0.query": (12, 10), "enc.0.value": (12, 10), "enc.1.query": (12, 10)},
    extra_trainable={"base_model.model.classifier.weight": [2, 12]},
)
RANKS = [2, 4, 8]


@pytest.fixture
def runtime(
    settings: Settings,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
) -> jobs.Runtime:
    return jobs.Runtime(settings=settings, sessions=app_sessions, store=store, enqueue=enqueued)


def _federation(api: TestClient, admin: dict[str, str], strategy: str, rounds: int = 2) -> str:
    body: dict[str, Any] = {
        "name": f"fed-{strategy}",
        "base_model_id": "tiny/bert",
        "task_type": "seq_cls",
        "model": MODEL.model_dump(mode="json"),
        "target_modules": ["query", "value"],
        "strategy": strategy,
        "strategy_params": {},
        "global_rank": 8,
        "num_rounds": rounds,
        "clients_per_round": len(RANKS),
        "min_clients": 2,
        "round_deadline_seconds": 600,
        "dp": {"mode": "none"},
    }
    r = api.post("/api/v1/federations", json=body, headers=admin)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _setup(api: TestClient, admin: dict[str, str], strategy: str) -> tuple[str, list[Party]]:
    fid = _federation(api, admin, strategy)
    org = make_org(api, admin, "org")
    parties = []
    for i, rank in enumerate(RANKS):
        party = enroll(api, admin, org, f"c{i}")
        join(api, admin, fid, party, rank=rank)  # membership + the client's fingerprint
        parties.append(party)
    r = api.post(f"/api/v1/federations/{fid}/start", headers=admin)
    assert r.status_code == 200, r.text
    return fid, parties


def _train_and_upload(api: TestClient, party: Party, seed: int) -> TaskAssignment:
    """A fake client: start from the served adapter, move every tensor a little, upload."""
    r = api.get("/api/v1/client/tasks/next", headers=party.headers)
    assert r.status_code == 200, r.text
    task = TaskAssignment.model_validate(r.json())
    r = api.get(f"/api/v1/client/tasks/{task.task_id}/start-adapter", headers=party.headers)
    assert r.status_code == 200, r.text
    assert hashlib.sha256(r.content).hexdigest() == task.plan.start.sha256
    start = load_np(r.content)
    rng = np.random.default_rng(seed)
    shapes = task.plan.upload_shapes()
    final = {
        k: (start[k] if k in start else np.zeros(s, np.float32))
        + rng.normal(0, 0.05, s).astype(np.float32)
        for k, s in shapes.items()
    }
    body = save_np(final)
    manifest = UploadManifest(
        task_id=task.task_id,
        base_model_fingerprint=FINGERPRINT,
        lora=task.plan.lora,
        sha256=hashlib.sha256(body).hexdigest(),
        size=len(body),
        num_examples=10 + seed,
        metrics={"train_loss": 0.5},
    )
    r = api.post(
        f"/api/v1/client/tasks/{task.task_id}/uploads",
        json=manifest.model_dump(mode="json"),
        headers={**party.headers, "Idempotency-Key": f"k-{task.task_id}"},
    )
    assert r.status_code == 201, r.text
    r = api.patch(
        f"/api/v1/client/uploads/{r.json()['upload_id']}",
        content=body,
        headers={**party.headers, "Upload-Offset": "0"},
    )
    assert r.status_code == 200, r.text
    return task


def _aggregating_round(sessions: sessionmaker[Session], fid: str) -> uuid.UUID:
    with sessions() as s:
        rnd = s.scalars(
            sa.select(Round).where(
                Round.federation_id == uuid.UUID(fid), Round.state == "aggregating"
            )
        ).one()
        return rnd.id


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_two_rounds_publish_and_complete_the_federation(
    strategy: str,
    api: TestClient,
    admin_headers: dict[str, str],
    runtime: jobs.Runtime,
    app_sessions: sessionmaker[Session],
    enqueued: RecordingEnqueuer,
) -> None:
    fid, parties = _setup(api, admin_headers, strategy)
    assert enqueued.names() == ["fedlora.open_round"]
    assert jobs.open_round(runtime, fid) is not None
    assert jobs.open_round(runtime, fid) is None  # a duplicate open is a no-op
    for number in (1, 2):
        tasks = [_train_and_upload(api, p, seed=i) for i, p in enumerate(parties)]
        ranks = sorted(t.plan.rank_budget or 0 for t in tasks)
        assert ranks == RANKS  # every client planned at its own budget
        rid = _aggregating_round(app_sessions, fid)
        assert enqueued.names()[-1] == "fedlora.aggregate_round"
        assert jobs.aggregate_round(runtime, str(rid)) is True
        assert jobs.aggregate_round(runtime, str(rid)) is False  # re-delivered: no-op
        with app_sessions() as s:
            adapter = s.scalars(sa.select(GlobalAdapter).where(GlobalAdapter.round_id == rid)).one()
            assert adapter.round_number == number
            assert len(adapter.update_ids) == len(parties)
            assert s.get_one(Round, rid).job_device == "cpu"
    with app_sessions() as s:
        assert s.get_one(Federation, uuid.UUID(fid)).status == "completed"
        assert s.scalar(sa.select(sa.func.count()).select_from(GlobalAdapter)) == 2


def test_concurrent_duplicate_jobs_publish_once(
    api: TestClient,
    admin_headers: dict[str, str],
    runtime: jobs.Runtime,
    app_sessions: sessionmaker[Session],
) -> None:
    fid, parties = _setup(api, admin_headers, "flexlora")
    jobs.open_round(runtime, fid)
    for i, p in enumerate(parties):
        _train_and_upload(api, p, seed=i)
    rid = _aggregating_round(app_sessions, fid)
    barrier = threading.Barrier(2)
    results: list[bool] = []

    def run(worker: str) -> None:
        barrier.wait()
        results.append(jobs.aggregate_round(runtime, str(rid), worker_id=worker))

    threads = [threading.Thread(target=run, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == [False, True]
    with app_sessions() as s:
        published = s.scalars(sa.select(GlobalAdapter).where(GlobalAdapter.round_id == rid)).all()
        assert len(published) == 1
        assert len(published[0].update_ids) == 3
        next_round = s.scalars(
            sa.select(Round).where(Round.federation_id == uuid.UUID(fid), Round.number == 2)
        ).one()
        assert s.scalar(
            sa.select(sa.func.count()).select_from(Task).where(Task.round_id == next_round.id)
        ) == len(parties)


def _poison_stored_update(
    sessions: sessionmaker[Session], store: ArtifactStore, task_id: str
) -> str:
    """Replace an accepted update's stored bytes by a file holding NaN: what the API's checks
    can no longer see (a bad disk, a check one side lacks) and only the worker's catch."""
    with sessions() as s:
        update = s.scalars(sa.select(Update).where(Update.task_id == uuid.UUID(task_id))).one()
        data = load_np(store.path(update.sha256).read_bytes())
        key = sorted(data)[0]
        data[key] = np.full_like(data[key], np.nan)
        store.path(update.sha256).write_bytes(save_np(data))
        return str(update.client_id)


def test_a_poisoned_update_is_dropped_and_the_round_publishes_from_the_others(
    api: TestClient,
    admin_headers: dict[str, str],
    runtime: jobs.Runtime,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
) -> None:
    fid, parties = _setup(api, admin_headers, "fedavg")  # min_clients 2 of 3
    jobs.open_round(runtime, fid)
    tasks = [_train_and_upload(api, p, seed=i) for i, p in enumerate(parties)]
    bad_client = _poison_stored_update(app_sessions, store, tasks[1].task_id)
    rid = _aggregating_round(app_sessions, fid)
    members = api.get(f"/api/v1/federations/{fid}/memberships", headers=admin_headers).json()
    first = next(m for m in members["data"] if m["client_id"] == parties[0].client_id)
    r = api.patch(
        f"/api/v1/federations/{fid}/memberships/{first['id']}",
        json={"max_examples": 5},
        headers=admin_headers,
    )
    assert r.status_code == 200, r.text
    with app_sessions() as s:  # the worker sees the admin's maximum next to the claim
        inputs = rounds.aggregation_inputs(session=s, round_id=rid)
        assert inputs is not None
        assert inputs.min_updates == 2
        capped = {str(u.client_id): u.max_examples for u in inputs.updates}
        assert capped[parties[0].client_id] == 5
        assert capped[parties[2].client_id] is None
    assert jobs.aggregate_round(runtime, str(rid)) is True
    with app_sessions() as s:
        assert s.get_one(Round, rid).state == "completed"
        adapter = s.scalars(sa.select(GlobalAdapter).where(GlobalAdapter.round_id == rid)).one()
        assert len(adapter.update_ids) == 2
        assert adapter.metrics["dropped_updates"] == 1.0
        assert adapter.metrics["weights_capped_by_max_examples"] == 1.0  # claimed 10, max 5
        assert adapter.metrics["norm_bounded_updates"] == 0.0
        ledger = s.scalars(sa.select(PrivacyLedgerEntry).where(PrivacyLedgerEntry.round_id == rid))
        assert len(ledger.all()) == 3  # the dropped client spent its epsilon on its machine
    r = api.get(f"/api/v1/federations/{fid}/updates", headers=admin_headers)
    assert r.status_code == 200, r.text
    dropped = {u["client_id"]: u["dropped_reason"] for u in r.json()["data"]}
    assert "NaN" in (dropped.pop(bad_client) or "")
    assert set(dropped.values()) == {None}


def test_too_few_usable_updates_fail_the_round_naming_each_drop(
    api: TestClient,
    admin_headers: dict[str, str],
    runtime: jobs.Runtime,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
) -> None:
    fid, parties = _setup(api, admin_headers, "fedavg")
    jobs.open_round(runtime, fid)
    tasks = [_train_and_upload(api, p, seed=i) for i, p in enumerate(parties)]
    bad = {_poison_stored_update(app_sessions, store, t.task_id) for t in tasks[:2]}
    rid = _aggregating_round(app_sessions, fid)
    assert jobs.aggregate_round(runtime, str(rid)) is False
    with app_sessions() as s:
        rnd = s.get_one(Round, rid)
        assert rnd.state == "failed"
        assert "1 usable update(s), the round needs 2" in (rnd.failure_reason or "")
        for client_id in bad:
            assert client_id in (rnd.failure_reason or "")
        marked = s.scalars(
            sa.select(Update.client_id).where(
                Update.round_id == rid, Update.dropped_reason.is_not(None)
            )
        ).all()
        assert {str(c) for c in marked} == bad
