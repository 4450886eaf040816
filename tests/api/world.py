"""A small world built through the API: two organizations, clients, a running federation."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.services import rounds
from api.storage import ArtifactStore
from tests.api.factories import FINGERPRINT, federation_body, make_plan


@dataclass
class Party:
    client_id: str
    organization_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class World:
    admin: dict[str, str]
    org_a: str
    org_b: str
    a1: Party
    a2: Party
    b1: Party
    federation_id: str
    parties: dict[str, Party] = field(default_factory=dict)


def make_org(api: TestClient, admin: dict[str, str], name: str) -> str:
    r = api.post("/api/v1/organizations", json={"name": name}, headers=admin)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def enroll(api: TestClient, admin: dict[str, str], org_id: str, name: str) -> Party:
    r = api.post("/api/v1/join-tokens", json={"organization_id": org_id}, headers=admin)
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    r = api.post("/api/v1/enroll", json={"join_token": token, "name": name})
    assert r.status_code == 201, r.text
    body = r.json()
    return Party(body["client_id"], body["organization_id"], body["api_key"])


def join(
    api: TestClient, admin: dict[str, str], federation_id: str, party: Party, rank: int = 4
) -> None:
    r = api.post(
        f"/api/v1/federations/{federation_id}/memberships",
        json={"client_id": party.client_id, "rank_budget": rank},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    r = api.put(
        f"/api/v1/client/memberships/{federation_id}",
        json={"fingerprint": FINGERPRINT},
        headers=party.headers,
    )
    assert r.status_code == 200, r.text


def build_world(api: TestClient, admin: dict[str, str], **fed: Any) -> World:
    """Org A (clients a1, a2) and org B (client b1); a1 and b1 are members of a federation."""
    org_a, org_b = make_org(api, admin, "org-a"), make_org(api, admin, "org-b")
    a1, a2 = enroll(api, admin, org_a, "a1"), enroll(api, admin, org_a, "a2")
    b1 = enroll(api, admin, org_b, "b1")
    r = api.post("/api/v1/federations", json=federation_body(**fed), headers=admin)
    assert r.status_code == 201, r.text
    fid = str(r.json()["id"])
    join(api, admin, fid, a1)
    join(api, admin, fid, b1)
    return World(admin, org_a, org_b, a1, a2, b1, fid)


def start(api: TestClient, world: World) -> None:
    r = api.post(f"/api/v1/federations/{world.federation_id}/start", headers=world.admin)
    assert r.status_code == 200, r.text


def open_next_round(
    sessions: sessionmaker[Session], store: ArtifactStore, federation_id: str | uuid.UUID
) -> uuid.UUID:
    """What the worker's open_round job does, with fedavg-like plans built in the test."""
    fid = uuid.UUID(str(federation_id))
    with sessions() as session:
        todo = rounds.round_to_open(session=session, federation_id=fid)
        assert todo is not None
        plans = {m.client_id: make_plan(store, rank=2, seed=i) for i, m in enumerate(todo.selected)}
        round_id = rounds.open_round(
            session=session, federation_id=fid, number=todo.number, plans=plans
        )
    assert round_id is not None
    return round_id
