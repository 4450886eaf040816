"""Uploads: resumable, idempotent, validated before acceptance, accepted once."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import uuid
import zipfile

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.db import PrivacyLedgerEntry, Update, UploadSessionRow
from api.services import rounds
from api.storage import ArtifactStore
from tests.api.factories import adapter_bytes, manifest_for
from tests.api.world import World, build_world, open_next_round, start


@pytest.fixture
def world(
    api: TestClient,
    admin_headers: dict[str, str],
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
) -> World:
    w = build_world(api, admin_headers)
    start(api, w)
    open_next_round(app_sessions, store, w.federation_id)
    return w


def _lease(api: TestClient, headers: dict[str, str]) -> str:
    r = api.get("/api/v1/client/tasks/next", headers=headers)
    assert r.status_code == 200, r.text
    return str(r.json()["task_id"])


def _begin(api: TestClient, headers: dict[str, str], task_id: str, body: bytes, key: str) -> dict:
    r = api.post(
        f"/api/v1/client/tasks/{task_id}/uploads",
        json=manifest_for(task_id, body),
        headers={**headers, "Idempotency-Key": key},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def _stored(store: ArtifactStore) -> set[str]:
    return {p.parent.name + p.name for p in (store.root / "sha256").rglob("*") if p.is_file()}


def test_resumable_upload_in_chunks_then_idempotent_replays(
    api: TestClient, world: World, app_sessions: sessionmaker[Session], store: ArtifactStore
) -> None:
    h = world.a1.headers
    task_id = _lease(api, h)
    body = adapter_bytes(2)
    session = _begin(api, h, task_id, body, "upload-key-1")
    assert session["offset"] == 0
    assert session["status"] == "receiving"
    url = f"/api/v1/client/uploads/{session['upload_id']}"
    half = len(body) // 2
    r = api.patch(url, content=body[:half], headers={**h, "Upload-Offset": "0"})
    assert r.json()["offset"] == half
    assert api.head(url, headers=h).headers["Upload-Offset"] == str(half)
    r = api.patch(url, content=body[half:], headers={**h, "Upload-Offset": "0"})
    assert r.status_code == 409  # wrong offset: the client must HEAD and resume
    r = api.patch(url, content=body[half:], headers={**h, "Upload-Offset": str(half)})
    assert r.status_code == 200, r.text
    accepted = r.json()
    assert accepted["status"] == "accepted"
    assert accepted["update_id"]
    # the same key again (a retry after a lost response) returns the same accepted session
    again = _begin(api, h, task_id, body, "upload-key-1")
    assert again == accepted
    r = api.patch(url, content=body, headers={**h, "Upload-Offset": "0"})
    assert r.json() == accepted
    # a new key for a task that already has its update is refused
    r = api.post(
        f"/api/v1/client/tasks/{task_id}/uploads",
        json=manifest_for(task_id, body),
        headers={**h, "Idempotency-Key": "upload-key-2"},
    )
    assert r.status_code == 409
    with app_sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Update)) == 1
        ledger = s.scalars(sa.select(PrivacyLedgerEntry)).all()
        assert [e.epsilon for e in ledger] == [0.5]
    assert store.exists(hashlib.sha256(body).hexdigest())


def test_same_key_with_a_different_manifest_is_a_conflict(api: TestClient, world: World) -> None:
    h = world.a1.headers
    task_id = _lease(api, h)
    _begin(api, h, task_id, adapter_bytes(2), "upload-key-x")
    other = adapter_bytes(2, fill=0.02)
    r = api.post(
        f"/api/v1/client/tasks/{task_id}/uploads",
        json=manifest_for(task_id, other),
        headers={**h, "Idempotency-Key": "upload-key-x"},
    )
    assert r.status_code == 409
    assert "different upload" in r.json()["detail"]


def test_missing_idempotency_key_is_explained(api: TestClient, world: World) -> None:
    task_id = _lease(api, world.a1.headers)
    body = adapter_bytes(2)
    r = api.post(
        f"/api/v1/client/tasks/{task_id}/uploads",
        json=manifest_for(task_id, body),
        headers=world.a1.headers,
    )
    assert r.status_code == 422  # required, as the OpenAPI says
    assert r.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    r = api.post(
        f"/api/v1/client/tasks/{task_id}/uploads",
        json=manifest_for(task_id, body),
        headers={**world.a1.headers, "Idempotency-Key": "short"},
    )
    assert r.status_code == 400
    assert "Idempotency-Key header of 8-128 characters" in r.json()["detail"]


def _pickle_bytes() -> bytes:
    return pickle.dumps({"w": [1.0, 2.0]})


def _nan_bytes() -> bytes:
    from safetensors.numpy import save

    from tests.api.factories import make_plan_shapes

    t = {k: np.zeros(s, dtype=np.float32) for k, s in make_plan_shapes(2).items()}
    next(iter(t.values()))[0, 0] = np.nan
    return save(t)


@pytest.mark.parametrize(
    ("make", "status", "words"),
    [
        (_pickle_bytes, 422, "pickle"),
        (lambda: adapter_bytes(3), 422, "shape"),
        (lambda: adapter_bytes(2, dtype=np.float64), 422, "dtype"),
        (_nan_bytes, 422, "finite"),
        (lambda: adapter_bytes(2)[:-10], 422, ""),
    ],
    ids=["pickle", "wrong-shape", "float64", "nan", "truncated"],
)
def test_bad_uploads_are_rejected_with_a_message_and_nothing_stays(
    api: TestClient,
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    make: object,
    status: int,
    words: str,
) -> None:
    h = world.a1.headers
    task_id = _lease(api, h)
    before = _stored(store)
    body = make()  # type: ignore[operator]
    session = _begin(api, h, task_id, body, f"bad-{uuid.uuid4()}")
    r = api.patch(
        f"/api/v1/client/uploads/{session['upload_id']}",
        content=body,
        headers={**h, "Upload-Offset": "0"},
    )
    assert r.status_code == status, r.text
    assert words.lower() in r.json()["detail"].lower()
    assert _stored(store) == before
    with app_sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Update)) == 0
        assert s.get(UploadSessionRow, uuid.UUID(session["upload_id"])) is None
    # the task stays leased: a correct upload is still accepted
    good = adapter_bytes(2)
    session = _begin(api, h, task_id, good, "good-after-bad")
    r = api.patch(
        f"/api/v1/client/uploads/{session['upload_id']}",
        content=good,
        headers={**h, "Upload-Offset": "0"},
    )
    assert r.json()["status"] == "accepted"


def test_manifest_must_match_the_plan(api: TestClient, world: World) -> None:
    task_id = _lease(api, world.a1.headers)
    body = adapter_bytes(2)
    m = manifest_for(task_id, body, rank=3)
    r = api.post(
        f"/api/v1/client/tasks/{task_id}/uploads",
        json=m,
        headers={**world.a1.headers, "Idempotency-Key": "rank-mismatch"},
    )
    assert r.status_code == 422
    assert "plan" in r.json()["detail"]


def test_a_num_examples_claim_the_database_cannot_hold_is_a_422(
    api: TestClient, world: World
) -> None:
    """#14 item 2: 2^31 overflowed the column at the last chunk (a 500, the file stored)."""
    task_id = _lease(api, world.a1.headers)
    m = manifest_for(task_id, adapter_bytes(2)) | {"num_examples": 2**31}
    r = api.post(
        f"/api/v1/client/tasks/{task_id}/uploads",
        json=m,
        headers={**world.a1.headers, "Idempotency-Key": "too-many-examples"},
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "num_examples"]


def test_download_start_adapter_and_global_adapter_tar(
    api: TestClient,
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
) -> None:
    h = world.a1.headers
    task_id = _lease(api, h)
    r = api.get(f"/api/v1/client/tasks/{task_id}/start-adapter", headers=h)
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == r.headers["X-Content-SHA256"]
    assert api.get(f"/api/v1/client/tasks/{task_id}/merge-adapter", headers=h).status_code == 404
    for party in (world.a1, world.b1):
        tid = task_id if party is world.a1 else _lease(api, party.headers)
        body = adapter_bytes(2)
        s = _begin(api, party.headers, tid, body, f"final-{tid}")
        api.patch(
            f"/api/v1/client/uploads/{s['upload_id']}",
            content=body,
            headers={**party.headers, "Upload-Offset": "0"},
        )
    weights, config = adapter_bytes(4), b'{"r": 4, "peft_type": "LORA"}'
    with app_sessions() as sess:
        rid = sess.scalar(sa.select(Update.round_id))
        assert rid is not None
        inputs = rounds.aggregation_inputs(session=sess, round_id=rid)
        assert inputs is not None
        assert rounds.publish_round(
            session=sess,
            round_id=rid,
            adapter_sha256=store.put_bytes(weights).sha256,
            adapter_config_sha256=store.put_bytes(config).sha256,
            update_ids=[u.update_id for u in inputs.updates],
        )
    listing = api.get(f"/api/v1/federations/{world.federation_id}/adapters", headers=world.admin)
    adapter_id = listing.json()["data"][0]["id"]
    r = api.get(f"/api/v1/adapters/{adapter_id}/download", headers=world.admin)
    assert r.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        names = sorted(tar.getnames())
        assert names == [
            "adapter-round-1/adapter_config.json",
            "adapter-round-1/adapter_model.safetensors",
        ]
        member = tar.extractfile("adapter-round-1/adapter_model.safetensors")
        assert member is not None
        assert member.read() == weights
    r = api.get(f"/api/v1/adapters/{adapter_id}/download?format=zip", headers=world.admin)
    assert r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        assert archive.read("adapter-round-1/adapter_config.json") == config
        assert archive.read("adapter-round-1/adapter_model.safetensors") == weights
    for what in ("tasks", "updates"):
        listed = api.get(f"/api/v1/federations/{world.federation_id}/{what}", headers=world.admin)
        assert listed.json()["count"] == 2


def test_bytes_that_do_not_hash_to_the_manifest_are_rejected(
    api: TestClient, world: World, app_sessions: sessionmaker[Session], store: ArtifactStore
) -> None:
    h = world.a1.headers
    task_id = _lease(api, h)
    declared, sent = adapter_bytes(2), adapter_bytes(2, fill=0.5)
    session = _begin(api, h, task_id, declared, "digest-mismatch")
    before = _stored(store)
    r = api.patch(
        f"/api/v1/client/uploads/{session['upload_id']}",
        content=sent,
        headers={**h, "Upload-Offset": "0"},
    )
    assert r.status_code == 422
    assert "sha256" in r.json()["detail"].lower() or "hash" in r.json()["detail"].lower()
    assert _stored(store) == before
    with app_sessions() as s:
        assert s.get(UploadSessionRow, uuid.UUID(session["upload_id"])) is None


def test_more_bytes_than_declared_are_refused(api: TestClient, world: World) -> None:
    h = world.a1.headers
    task_id = _lease(api, h)
    body = adapter_bytes(2)
    session = _begin(api, h, task_id, body, "too-many-bytes")
    r = api.patch(
        f"/api/v1/client/uploads/{session['upload_id']}",
        content=body + b"extra",
        headers={**h, "Upload-Offset": "0"},
    )
    assert r.status_code == 413
    url = f"/api/v1/client/uploads/{session['upload_id']}"
    assert api.head(url, headers=h).headers["Upload-Offset"] == "0"  # rolled back, resumable


def test_manifest_larger_than_the_server_limit_is_refused_up_front(
    api: TestClient, world: World
) -> None:
    task_id = _lease(api, world.a1.headers)
    m = manifest_for(task_id, adapter_bytes(2))
    m["size"] = 10 * 1024 * 1024 * 1024
    r = api.post(
        f"/api/v1/client/tasks/{task_id}/uploads",
        json=m,
        headers={**world.a1.headers, "Idempotency-Key": "huge-manifest"},
    )
    assert r.status_code == 413
    assert "upload limit" in r.json()["detail"]
