"""Admin CRUD, key handling, enrollment, federation validation and lifecycle."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.db import Client, JoinToken, utcnow
from api.errors import AuthenticationError
from api.services import identity
from fedlora_client.protocol import EnrollRequest
from tests.api.conftest import ADMIN_EMAIL
from tests.api.factories import SPEC, federation_body
from tests.api.world import build_world, enroll, make_org
from worker.strategies.params import RECOMMENDED_STRATEGY

V1 = "/api/v1"


def test_login_rejects_wrong_password_and_tokens_work(api: TestClient) -> None:
    r = api.post(f"{V1}/auth/login", json={"email": ADMIN_EMAIL, "password": "nope"})
    assert r.status_code == 401
    assert r.json()["detail"] == "wrong email or password"
    assert api.get(f"{V1}/auth/me", headers={"Authorization": "Bearer junk"}).status_code == 401


def test_login_token_identifies_the_admin(api: TestClient, admin_headers: dict[str, str]) -> None:
    assert api.get(f"{V1}/auth/me", headers=admin_headers).json()["email"] == ADMIN_EMAIL


def test_organization_crud_and_paging(api: TestClient, admin_headers: dict[str, str]) -> None:
    ids = [make_org(api, admin_headers, f"org-{i}") for i in range(3)]
    r = api.get(f"{V1}/organizations?skip=1&limit=1", headers=admin_headers).json()
    assert r["count"] == 3
    assert [o["id"] for o in r["data"]] == [ids[1]]
    r = api.post(f"{V1}/organizations", json={"name": "org-0"}, headers=admin_headers)
    assert r.status_code == 409
    assert "choose another name" in r.json()["detail"]
    r = api.patch(f"{V1}/organizations/{ids[0]}", json={"description": "d"}, headers=admin_headers)
    assert r.json()["description"] == "d"
    r = api.patch(f"{V1}/organizations/{ids[0]}", json={"id": ids[1]}, headers=admin_headers)
    assert r.status_code == 422  # ids and server fields are not settable
    assert api.delete(f"{V1}/organizations/{ids[2]}", headers=admin_headers).status_code == 204
    assert api.get(f"{V1}/organizations/{ids[2]}", headers=admin_headers).status_code == 404
    # an organization with a client is refused by name (a 500 before), and stays as it was
    party = enroll(api, admin_headers, ids[1], "c-1")
    r = api.delete(f"{V1}/organizations/{ids[1]}", headers=admin_headers)
    assert r.status_code == 409
    assert "has 1 client(s)" in r.json()["detail"]
    assert api.get(f"{V1}/organizations/{ids[1]}", headers=admin_headers).status_code == 200
    r = api.get(f"{V1}/client/tasks/next", params={"wait": 0}, headers=party.headers)
    assert r.status_code == 204  # its client still authenticates: nothing was deleted
    # paging past any sane table size is a 422, not a database error
    r = api.get(f"{V1}/organizations?skip={2**63}", headers=admin_headers)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "skip"]
    audit = api.get(f"{V1}/audit-log", headers=admin_headers).json()
    assert {"organization.create", "organization.update", "organization.delete"} <= {
        e["action"] for e in audit["data"]
    }


def test_api_keys_are_stored_hashed_revocable_and_rotatable(
    api: TestClient, admin_headers: dict[str, str], app_sessions: sessionmaker[Session]
) -> None:
    org = make_org(api, admin_headers, "keys")
    party = enroll(api, admin_headers, org, "c1")
    with app_sessions() as s:
        stored = s.scalars(sa.select(Client.api_key_hash)).all()
    assert party.key not in stored
    assert api.get(f"{V1}/client/me", headers=party.headers).status_code == 200
    r = api.post(f"{V1}/clients/{party.client_id}/revoke", headers=admin_headers)
    assert r.json()["revoked"] is True
    r = api.get(f"{V1}/client/me", headers=party.headers)
    assert r.status_code == 401
    assert "revoked" in r.json()["detail"]
    r = api.post(f"{V1}/clients/{party.client_id}/rotate-key", headers=admin_headers)
    new_key = r.json()["api_key"]
    assert new_key != party.key
    assert api.get(f"{V1}/client/me", headers=party.headers).status_code == 401
    me = api.get(f"{V1}/client/me", headers={"Authorization": f"Bearer {new_key}"})
    assert me.status_code == 200
    listed = api.get(f"{V1}/clients/{party.client_id}", headers=admin_headers).json()
    assert "api_key" not in listed


def test_join_tokens_are_one_time_and_expire(
    api: TestClient, admin_headers: dict[str, str], app_sessions: sessionmaker[Session]
) -> None:
    org = make_org(api, admin_headers, "tokens")
    token = api.post(
        f"{V1}/join-tokens", json={"organization_id": org}, headers=admin_headers
    ).json()["token"]
    assert api.post(f"{V1}/enroll", json={"join_token": token, "name": "x"}).status_code == 201
    r = api.post(f"{V1}/enroll", json={"join_token": token, "name": "y"})
    assert r.status_code == 401
    assert "already used" in r.json()["detail"]
    token2 = api.post(
        f"{V1}/join-tokens", json={"organization_id": org}, headers=admin_headers
    ).json()["token"]
    with app_sessions() as s:
        s.execute(sa.update(JoinToken).values(expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()
    assert api.post(f"{V1}/enroll", json={"join_token": token2, "name": "z"}).status_code == 401


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"strategy": "fedmagic"}, "unknown strategy 'fedmagic'"),
        ({"min_clients": 3, "clients_per_round": 2}, "min_clients (3) exceeds clients_per_round"),
        ({"strategy_params": {"no_such_param": 1}}, "strategy_params for 'fedavg' are invalid"),
        ({"status": "running"}, "Extra inputs are not permitted"),
        ({"target_modules": ["../etc"]}, "not a dotted identifier"),
        ({"dp": {"mode": "sample"}}, "noise_multiplier and target_epsilon"),
    ],
)
def test_federation_validation_messages_say_what_to_fix(
    api: TestClient, admin_headers: dict[str, str], override: dict[str, object], message: str
) -> None:
    r = api.post(f"{V1}/federations", json=federation_body(**override), headers=admin_headers)
    assert r.status_code == 422, r.text
    assert message in r.text


def test_a_seq_cls_federation_without_its_head_is_refused_with_the_fix(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    """Without the head in extra_trainable it would never be shared: every client would keep
    its own random classifier. The 422 names the field and the inspect command that fixes it."""
    headless = SPEC.model_dump(mode="json")
    assert headless["extra_trainable"] == {}
    body = federation_body(task_type="seq_cls", model=headless)
    r = api.post(f"{V1}/federations", json=body, headers=admin_headers)
    assert r.status_code == 422, r.text
    (problem,) = r.json()["detail"]
    assert problem["loc"] == ["body", "model"]
    assert "needs the classification head in model.extra_trainable" in problem["msg"]
    assert "fedlora-client inspect <model dir> --task seq_cls" in problem["msg"]
    # a causal LM has no head to share; a seq_cls spec with its head is accepted
    lm = federation_body(name="lm", task_type="causal_lm", model=headless)
    assert api.post(f"{V1}/federations", json=lm, headers=admin_headers).status_code == 201
    cls = federation_body(name="cls", task_type="seq_cls")
    assert api.post(f"{V1}/federations", json=cls, headers=admin_headers).status_code == 201


def test_server_optimizer_is_stored_resolved_and_checked_against_the_strategy(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    url = f"{V1}/federations"
    chosen = {"name": "momentum", "momentum": 0.5, "lr": 1.0}
    r = api.post(url, json=federation_body(server_optimizer=chosen), headers=admin_headers)
    assert r.status_code == 201, r.text
    assert r.json()["server_optimizer"] | chosen == r.json()["server_optimizer"]
    # none named: the platform's default for the strategy (FLoRA takes none at all)
    flora = federation_body(name="flora", strategy="flora")
    r = api.post(url, json=flora, headers=admin_headers)
    assert r.json()["server_optimizer"]["name"] == "none"
    bad = federation_body(name="x", strategy="flexlora", server_optimizer={"name": "adam"})
    r = api.post(url, json=bad, headers=admin_headers)
    assert r.status_code == 422
    assert "use 'momentum' or 'none'" in r.text
    fed = api.post(url, json=federation_body(name="y"), headers=admin_headers).json()
    r = api.patch(f"{url}/{fed['id']}", json={"server_optimizer": {"name": "yogi", "lr": 0.01}},
                  headers=admin_headers)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["server_optimizer"]["name"] == "yogi"


def test_training_defaults_follow_the_strategy_and_explicit_fields_stay(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    url = f"{V1}/federations"
    sgd = api.post(
        url, json=federation_body(name="a", training={"steps": 3}), headers=admin_headers
    )
    assert sgd.json()["training"] | {"optimizer": "sgd", "steps": 3} == sgd.json()["training"]
    flex = federation_body(name="b", strategy="flexlora", training={"steps": 3})
    r = api.post(url, json=flex, headers=admin_headers).json()
    assert (r["training"]["optimizer"], r["training"]["label_balance"]) == ("adamw", "none")
    assert r["server_optimizer"]["name"] == "none"
    mine = federation_body(name="c", strategy="flexlora", training={"optimizer": "sgd"})
    r = api.post(url, json=mine, headers=admin_headers).json()
    assert r["training"]["optimizer"] == "sgd"
    assert r["training"]["learning_rate"] == 2e-3  # what was left out follows the strategy


def test_federation_lifecycle_and_draft_only_fields(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    w = build_world(api, admin_headers)
    fed = f"{V1}/federations/{w.federation_id}"
    assert api.post(f"{fed}/pause", headers=admin_headers).status_code == 409
    assert api.post(f"{fed}/start", headers=admin_headers).json()["status"] == "running"
    r = api.patch(fed, json={"num_rounds": 9}, headers=admin_headers)
    assert r.status_code == 409
    assert "only while the federation is a draft" in r.json()["detail"]
    assert api.patch(fed, json={"name": "renamed"}, headers=admin_headers).status_code == 200
    assert api.post(f"{fed}/pause", headers=admin_headers).json()["status"] == "paused"
    assert api.post(f"{fed}/resume", headers=admin_headers).json()["status"] == "running"
    assert api.delete(fed, headers=admin_headers).status_code == 409
    assert api.post(f"{fed}/cancel", headers=admin_headers).json()["status"] == "cancelled"
    assert api.post(f"{fed}/resume", headers=admin_headers).status_code == 409
    assert api.delete(fed, headers=admin_headers).status_code == 204


def test_start_needs_enough_members(api: TestClient, admin_headers: dict[str, str]) -> None:
    r = api.post(f"{V1}/federations", json=federation_body(), headers=admin_headers)
    r = api.post(f"{V1}/federations/{r.json()['id']}/start", headers=admin_headers)
    assert r.status_code == 409
    assert "add memberships first" in r.json()["detail"]


def test_memberships_rank_budget_and_fingerprint_report(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    w = build_world(api, admin_headers)
    base = f"{V1}/federations/{w.federation_id}/memberships"
    members = api.get(base, headers=admin_headers).json()
    assert members["count"] == 2
    m = members["data"][0]
    assert m["epsilon_spent"] == 0.0
    r = api.patch(f"{base}/{m['id']}", json={"rank_budget": 8}, headers=admin_headers)
    assert r.json()["rank_budget"] == 8
    r = api.patch(f"{base}/{m['id']}", json={"epsilon_spent": 0}, headers=admin_headers)
    assert r.status_code == 422
    r = api.post(base, json={"client_id": w.a1.client_id, "rank_budget": 4}, headers=admin_headers)
    assert r.status_code == 409
    r = api.put(
        f"{V1}/client/memberships/{w.federation_id}",
        json={"fingerprint": "cd" * 32},
        headers=w.a1.headers,
    )
    assert r.status_code == 422
    assert "does not match the federation's base model" in r.json()["detail"]


def test_strategies_publish_their_parameter_schemas(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    listed = api.get(f"{V1}/strategies", headers=admin_headers).json()
    names = {s["name"] for s in listed}
    assert names == {"fedavg", "hetlora", "flora", "flexlora", "fslora", "sdflora", "prelort"}
    assert [s["name"] for s in listed if s["recommended"]] == [RECOMMENDED_STRATEGY]


def test_a_join_token_enrolls_exactly_one_client_under_a_race(
    api: TestClient, admin_headers: dict[str, str], app_sessions: sessionmaker[Session]
) -> None:
    org = make_org(api, admin_headers, "racing-tokens")
    token = api.post(
        f"{V1}/join-tokens", json={"organization_id": org}, headers=admin_headers
    ).json()["token"]
    barrier = threading.Barrier(6)

    def attempt(i: int) -> bool:
        barrier.wait()
        with app_sessions() as s:
            try:
                identity.enroll(session=s, body=EnrollRequest(join_token=token, name=f"c{i}"))
            except AuthenticationError:
                return False
            return True

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(attempt, range(6)))
    assert results.count(True) == 1
    with app_sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Client)) == 1


def test_clients_report_hardware_and_are_seen(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    party = enroll(api, admin_headers, make_org(api, admin_headers, "hw"), "gpu-box")
    r = api.patch(
        f"{V1}/client/me",
        json={"accelerator": "NVIDIA A10", "memory_gb": 24},
        headers=party.headers,
    )
    assert r.json()["hardware"] == {"accelerator": "NVIDIA A10", "memory_gb": 24.0}
    listed = api.get(f"{V1}/clients/{party.client_id}", headers=admin_headers).json()
    assert listed["hardware"]["accelerator"] == "NVIDIA A10"
    assert listed["last_seen_at"] is not None


def test_federations_filter_by_status(api: TestClient, admin_headers: dict[str, str]) -> None:
    w = build_world(api, admin_headers)
    api.post(f"{V1}/federations", json=federation_body(name="other"), headers=admin_headers)
    api.post(f"{V1}/federations/{w.federation_id}/start", headers=admin_headers)
    running = api.get(f"{V1}/federations?status=running", headers=admin_headers).json()
    assert [f["id"] for f in running["data"]] == [w.federation_id]
    assert api.get(f"{V1}/federations?status=draft", headers=admin_headers).json()["count"] == 1
