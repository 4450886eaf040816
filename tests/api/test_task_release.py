"""Releasing a task before its upload (by its client or an admin): the round stops waiting."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.db import Round
from api.queue import RecordingEnqueuer
from api.storage import ArtifactStore
from tests.api.test_rounds import AGG, OPEN, _lease, _upload
from tests.api.world import World, build_world, open_next_round, start

V1 = "/api/v1"


@pytest.fixture
def world(api: TestClient, admin_headers: dict[str, str]) -> World:
    w = build_world(api, admin_headers, min_clients=1, clients_per_round=2, num_rounds=2)
    start(api, w)
    return w


def _tasks(api: TestClient, world: World, round_id: uuid.UUID) -> dict[str, dict[str, object]]:
    r = api.get(f"{V1}/rounds/{round_id}/tasks", headers=world.admin)
    assert r.status_code == 200, r.text
    return {t["client_id"]: t for t in r.json()["data"]}


def _round(sessions: sessionmaker[Session], round_id: uuid.UUID) -> Round:
    with sessions() as s:
        return s.get_one(Round, round_id)


def test_a_client_releases_its_leased_task_and_the_round_goes_on_without_it(
    api: TestClient,
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
) -> None:
    rid = open_next_round(app_sessions, store, world.federation_id)
    mine = _lease(api, world.a1.headers)
    _upload(api, world.b1.headers, _lease(api, world.b1.headers))
    assert _round(app_sessions, rid).state == "open"  # still waiting for a1's leased task

    reason = "DataColumnError: column 'label' not found; available columns: 'text', 'y'"
    r = api.post(
        f"{V1}/client/tasks/{mine}/release", json={"reason": reason}, headers=world.a1.headers
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"task_id": mine, "status": "released"}

    shown = _tasks(api, world, rid)[world.a1.client_id]
    assert (shown["status"], shown["released_by"], shown["release_reason"]) == (
        "released",
        "client",
        reason,
    )
    assert shown["released_at"] is not None
    # b1's update is enough (min_clients=1) and nothing is outstanding: aggregate now
    assert _round(app_sessions, rid).state == "aggregating"
    assert enqueued.jobs[-1] == (AGG, [str(rid)])
    # the released task is gone for good: not handed out again, not resumable
    assert api.get(f"{V1}/client/tasks/next", headers=world.a1.headers).status_code == 204
    r = api.get(f"{V1}/client/tasks/{mine}", headers=world.a1.headers)
    assert r.status_code == 409
    assert "released" in r.json()["detail"]


def test_an_admin_releases_a_pending_task_and_a_round_with_no_update_fails_at_once(
    api: TestClient,
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
) -> None:
    rid = open_next_round(app_sessions, store, world.federation_id)
    tasks = _tasks(api, world, rid)
    a1_task, b1_task = tasks[world.a1.client_id]["id"], tasks[world.b1.client_id]["id"]
    enqueued.jobs.clear()

    r = api.post(
        f"{V1}/tasks/{a1_task}/release", json={"reason": "a1 is offline"}, headers=world.admin
    )
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["released_by"]) == ("released", "admin")
    assert _round(app_sessions, rid).state == "open"  # b1 may still deliver

    r = api.post(f"{V1}/tasks/{b1_task}/release", headers=world.admin)  # no body: default reason
    assert r.status_code == 200, r.text
    assert r.json()["release_reason"] == "released by an admin"
    rnd = _round(app_sessions, rid)
    assert rnd.state == "failed"
    assert "every task ended with 0 update(s)" in (rnd.failure_reason or "")
    assert enqueued.jobs == [(OPEN, [world.federation_id])]  # a new round replaces it

    audit = api.get(f"{V1}/audit-log", headers=world.admin).json()["data"]
    releases = [e for e in audit if e["action"] == "task.release"]
    assert {e["object_id"] for e in releases} == {a1_task, b1_task}
    assert {"reason": "a1 is offline"} in [e["details"] for e in releases]


def test_a_release_never_takes_back_an_upload_nor_touches_another_clients_task(
    api: TestClient, world: World, app_sessions: sessionmaker[Session], store: ArtifactStore
) -> None:
    rid = open_next_round(app_sessions, store, world.federation_id)
    a1_task = _lease(api, world.a1.headers)
    _upload(api, world.a1.headers, a1_task)
    b1_task = _lease(api, world.b1.headers)

    r = api.post(f"{V1}/client/tasks/{a1_task}/release", json={"reason": "x"},
                 headers=world.a1.headers)  # fmt: skip
    assert r.status_code == 409
    assert "uploaded" in r.json()["detail"]
    r = api.post(f"{V1}/tasks/{a1_task}/release", headers=world.admin)
    assert r.status_code == 409
    # someone else's task is "not found" to a client, and a reason is required
    r = api.post(f"{V1}/client/tasks/{b1_task}/release", json={"reason": "x"},
                 headers=world.a1.headers)  # fmt: skip
    assert r.status_code == 404
    r = api.post(f"{V1}/client/tasks/{b1_task}/release", json={"reason": ""},
                 headers=world.b1.headers)  # fmt: skip
    assert r.status_code == 422
    r = api.post(f"{V1}/tasks/{uuid.uuid4()}/release", headers=world.admin)
    assert r.status_code == 404
    assert api.post(f"{V1}/tasks/{b1_task}/release").status_code == 401  # admins only
    tasks = _tasks(api, world, rid)
    assert tasks[world.a1.client_id]["status"] == "uploaded"
    assert tasks[world.b1.client_id]["status"] == "leased"


def test_a_client_gets_its_leased_task_again_by_id_to_resume_it(
    api: TestClient, world: World, app_sessions: sessionmaker[Session], store: ArtifactStore
) -> None:
    open_next_round(app_sessions, store, world.federation_id)
    task_id = _lease(api, world.a1.headers)
    r = api.get(f"{V1}/client/tasks/{task_id}", headers=world.a1.headers)
    assert r.status_code == 200, r.text
    assert r.json()["task_id"] == task_id
    assert api.get(f"{V1}/client/tasks/{task_id}", headers=world.b1.headers).status_code == 404
    _upload(api, world.a1.headers, task_id)
    r = api.get(f"{V1}/client/tasks/{task_id}", headers=world.a1.headers)
    assert r.status_code == 409  # uploaded: nothing left to resume
