"""Every route x {admin, own client, other organization's client, anonymous}.

The routes come from the app's OpenAPI route table, so a new route is checked the moment it
exists: it is an admin route unless its tag is ``client`` or it is listed as public here.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy.orm import Session, sessionmaker

from api.storage import ArtifactStore
from tests.api.factories import FINGERPRINT, adapter_bytes, manifest_for
from tests.api.world import World, build_world, open_next_round, start

PUBLIC = {"system-healthz", "system-readyz", "system-workers_health", "auth-login", "client-enroll"}
# A plan without a merge adapter answers 404 to its own client (only FLoRA plans have one), and
# a round-1 plan names no global adapter to evaluate.
OWN_404_BY_DESIGN = {"client-download_merge_adapter", "client-download_global_adapter"}
NOT_AUTHORIZED = {401, 403}


def _routes(app: FastAPI) -> list[tuple[str, str, str, str]]:
    """(method, path template, operation id, tag) for every route in the app."""
    out = []
    for path, ops in app.openapi()["paths"].items():
        for method, op in ops.items():
            out.append((method.upper(), path, op["operationId"], op["tags"][0]))
    return out


@pytest.fixture
def world(
    api: TestClient,
    admin_headers: dict[str, str],
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
) -> World:
    w = build_world(api, admin_headers)
    # b1 (organization B) leaves the federation: every object below belongs to a1 (org A)
    r = api.get(f"/api/v1/federations/{w.federation_id}/memberships", headers=admin_headers)
    for m in r.json()["data"]:
        if m["client_id"] == w.b1.client_id:
            api.delete(
                f"/api/v1/federations/{w.federation_id}/memberships/{m['id']}",
                headers=admin_headers,
            )
    start(api, w)
    open_next_round(app_sessions, store, w.federation_id)
    r = api.get("/api/v1/client/tasks/next", headers=w.a1.headers)
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    body = adapter_bytes(2)
    r = api.post(
        f"/api/v1/client/tasks/{task_id}/uploads",
        json=manifest_for(task_id, body),
        headers={**w.a1.headers, "Idempotency-Key": "matrix-upload"},
    )
    assert r.status_code == 201, r.text
    w.parties["objects"] = {  # type: ignore[assignment]
        "federation_id": w.federation_id,
        "task_id": task_id,
        "upload_id": r.json()["upload_id"],
    }
    return w


def _call(
    api: TestClient,
    method: str,
    path: str,
    op: str,
    params: dict[str, str],
    headers: dict[str, str],
) -> Response:
    url = re.sub(r"{(\w+)}", lambda m: params.get(m.group(1), str(uuid.uuid4())), path)
    kwargs: dict[str, Any] = {"headers": dict(headers)}
    if op == "client-report_fingerprint":
        kwargs["json"] = {"fingerprint": FINGERPRINT}
    elif op == "client-report_task":
        kwargs["json"] = {"metrics": {}}
    elif op == "client-release_task":
        kwargs["json"] = {"reason": "the matrix releases it"}
    elif op == "client-report_evaluation":
        kwargs["json"] = {"adapter_sha256": "a" * 64, "num_examples": 1, "loss": 0.5}
    elif op == "client-report_hardware":
        kwargs["json"] = {"accelerator": "cpu", "memory_gb": 1}
    elif op == "client-create_upload":
        kwargs["json"] = manifest_for(params.get("task_id", "x"), adapter_bytes(2))
        kwargs["headers"]["Idempotency-Key"] = "matrix-upload"
    elif op == "client-upload_chunk":
        kwargs["headers"]["Upload-Offset"] = "0"
        kwargs["content"] = b""
    elif method in {"POST", "PUT", "PATCH"}:
        kwargs["json"] = {}
    return api.request(method, url, **kwargs)


def test_every_route_answers_each_caller_as_it_should(
    api: TestClient, app: FastAPI, world: World
) -> None:
    objects: dict[str, str] = world.parties["objects"]  # type: ignore[assignment]
    admin = world.admin
    problems: list[str] = []
    # logout revokes the admin's tokens, the matrix's own included: it goes last
    routes = sorted(_routes(app), key=lambda route: route[2] == "auth-logout")
    assert len(routes) > 40
    for method, path, op, tag in routes:
        has_ids = "{" in path
        kind = "public" if op in PUBLIC else "client" if tag == "client" else "admin"

        label = f"{method} {path} [{kind}]"

        def check(who: str, resp: Response, ok: bool, want: str, label: str = label) -> None:
            if not ok:
                problems.append(f"{label} as {who}: {resp.status_code}, {want}")

        anon = _call(api, method, path, op, objects, {})
        if kind == "public":
            check("anonymous", anon, anon.status_code not in NOT_AUTHORIZED, "public")
            continue
        check("anonymous", anon, anon.status_code == 401, "expected 401")
        if kind == "admin":
            r = _call(api, method, path, op, {}, admin)  # random ids: never destroys anything
            check("admin", r, r.status_code not in NOT_AUTHORIZED, "admin must be allowed")
            for who, party in (("own client", world.a1), ("other org client", world.b1)):
                r = _call(api, method, path, op, objects, party.headers)
                check(who, r, r.status_code == 401, "a client key is not an admin token")
            continue
        r = _call(api, method, path, op, objects, admin)
        check("admin", r, r.status_code == 401, "an admin token is not a client key")
        other = _call(api, method, path, op, objects, world.b1.headers)
        if has_ids:
            check("other org client", other, other.status_code == 404, "expected 404")
        else:
            check("other org client", other, other.status_code not in NOT_AUTHORIZED, "own data")
        own = _call(api, method, path, op, objects, world.a1.headers)
        allowed_404 = op in OWN_404_BY_DESIGN
        bad = NOT_AUTHORIZED | (set() if allowed_404 else {404})
        check("own client", own, own.status_code not in bad, "own objects must be reachable")
    assert not problems, "\n".join(problems)


def test_other_clients_see_only_their_own_memberships(api: TestClient, world: World) -> None:
    mine = api.get("/api/v1/client/memberships", headers=world.a1.headers).json()
    theirs = api.get("/api/v1/client/memberships", headers=world.b1.headers).json()
    assert [m["federation_id"] for m in mine] == [world.federation_id]
    assert theirs == []
    r = api.get("/api/v1/client/tasks/next", headers=world.b1.headers)
    assert r.status_code == 204
