"""The SDK against the real API app in-process (SQLite and Postgres, via the API's fixtures).

The app's sync test transport (starlette's, the synchronous counterpart of httpx's
``ASGITransport``) is injected into the SDK's ``httpx.Client``; plans come from the test (what
the worker's ``open_round`` job would store), with real start artifacts in the app's store.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.db.rounds import Update
from api.services import rounds
from api.storage import ArtifactStore
from fedlora_client import FedloraClient, Participant, RetryPolicy, participate
from fedlora_client import protocol as p
from tests.api.factories import federation_body
from tests.api.world import make_org
from tests.client_sdk.conftest import METHODS, lm_records, method_task

FAST = RetryPolicy(attempts=4, backoff_min=0.001, backoff_max=0.01)


class AppTransport(httpx.BaseTransport):
    """The app's test transport, with its response re-wrapped for a plain ``httpx.Client``."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        content = response.read()
        return httpx.Response(response.status_code, headers=response.headers, content=content)


class Flaky(httpx.BaseTransport):
    """Delegates to the app; the n-th PATCH is processed but its response is lost."""

    def __init__(self, inner: httpx.BaseTransport, fail_patch: int) -> None:
        self.inner, self.fail_patch, self.patches = inner, fail_patch, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH":
            self.patches += 1
            if self.patches == self.fail_patch:
                self.inner.handle_request(request).read()
                raise httpx.RemoteProtocolError("connection dropped", request=request)
        return self.inner.handle_request(request)


def _federation(api: TestClient, admin: dict[str, str], spec: p.ModelSpec) -> tuple[str, str]:
    org = make_org(api, admin, "org-sdk")
    fed = federation_body(
        name="sdk-fed",
        base_model_id="tiny-llama",
        task_type="causal_lm",
        model=spec.model_dump(mode="json"),
        target_modules=["q_proj", "v_proj"],
        min_clients=1,
        clients_per_round=1,
        dp={"mode": "client", "noise_multiplier": 1.0, "epsilon_budget": 50.0},
    )
    r = api.post("/api/v1/federations", json=fed, headers=admin)
    assert r.status_code == 201, r.text
    return org, str(r.json()["id"])


class StoreArtifacts:
    """Lets the shared plan builders (``method_task``) put start/merge files in the app's store."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    def add_artifact(self, data: bytes, lora: p.LoraSpec) -> p.ArtifactRef:
        ref = self.store.put_bytes(data)
        return p.ArtifactRef(sha256=ref.sha256, size=ref.size, lora=lora)


DP_OF = {"fedavg": "none", "hetlora": "sample", "flexlora": "sample", "prelort": "sample"}


def _plan(store: ArtifactStore, spec: p.ModelSpec, method: str) -> p.TrainingPlan:
    """The plan shape ``method``'s planning hook produces (start/merge files in the store)."""
    task = method_task(StoreArtifacts(store), spec, p.TaskType.CAUSAL_LM, method,  # type: ignore[arg-type]
                       dp=p.DPMode(DP_OF.get(method, "client")))  # fmt: skip
    dp = task.plan.dp.model_copy(update={"epsilon_budget": 50.0})
    return task.plan.model_copy(update={"dp": dp})


def _round(
    api: TestClient, admin: dict[str, str], store: ArtifactStore,
    sessions: sessionmaker[Session], spec: p.ModelSpec, method: str, tmp_path: Path,
    tiny_llama: Path, transport: httpx.BaseTransport | None = None,
) -> tuple[str, int]:  # fmt: skip
    org, fid = _federation(api, admin, spec)
    r = api.post("/api/v1/join-tokens", json={"organization_id": org}, headers=admin)
    assert r.status_code == 201, r.text
    client = FedloraClient.enroll(
        "http://testserver", r.json()["token"], name="sdk",
        credentials_path=tmp_path / "creds.json", retry=FAST, state_dir=tmp_path / "state",
        transport=transport or AppTransport(api._transport), chunk_bytes=512,
    )  # fmt: skip
    r = api.post(f"/api/v1/federations/{fid}/memberships",
                 json={"client_id": client.credentials.client_id, "rank_budget": 4},
                 headers=admin)  # fmt: skip
    assert r.status_code == 201, r.text
    client.report_hardware(p.HardwareProfile(accelerator="cpu", memory_gb=16))
    me = client.me()
    assert me["id"] == client.credentials.client_id
    assert me["hardware"]["memory_gb"] == 16
    participant = Participant(client, tiny_llama, lm_records(), progress=False, noise_seed=0)
    participant.check_memberships()  # reports the fingerprint: the client becomes eligible
    assert api.post(f"/api/v1/federations/{fid}/start", headers=admin).status_code == 200
    with sessions() as session:
        todo = rounds.round_to_open(session=session, federation_id=uuid.UUID(fid))
        assert todo is not None
        plans = {m.client_id: _plan(store, spec, method) for m in todo.selected}
        assert rounds.open_round(session=session, federation_id=uuid.UUID(fid),
                                 number=todo.number, plans=plans) is not None  # fmt: skip
    with client:
        assert participate(participant, wait=1, stop_when_idle=True) == 1
    with sessions() as session:
        count = session.scalar(sa.select(sa.func.count()).select_from(Update))
    return fid, int(count or 0)


# Every method's plan shape on SQLite; FedAvg and SDFLoRA (the two plan extremes: plain factors,
# and a private module that must never reach the server) on Postgres as well.
ROUNDS = [
    (method, db)
    for method in METHODS
    for db in (("sqlite", "postgres") if method in {"fedavg", "sdflora"} else ("sqlite",))
]


@pytest.mark.parametrize(("method", "db_url"), ROUNDS, indirect=["db_url"])
def test_full_round_against_the_api(
    method: str, api: TestClient, admin_headers: dict[str, str], store: ArtifactStore,
    app_sessions: sessionmaker[Session], llama_spec: p.ModelSpec, tiny_llama: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    _, accepted = _round(api, admin_headers, store, app_sessions, llama_spec, method, tmp_path,
                         tiny_llama)  # fmt: skip
    assert accepted == 1


def test_dropped_connection_mid_upload_ends_with_exactly_one_update(
    api: TestClient, admin_headers: dict[str, str], store: ArtifactStore,
    app_sessions: sessionmaker[Session], llama_spec: p.ModelSpec, tiny_llama: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    flaky = Flaky(AppTransport(api._transport), fail_patch=2)
    _, accepted = _round(api, admin_headers, store, app_sessions, llama_spec, "fedavg", tmp_path,
                         tiny_llama, transport=flaky)  # fmt: skip
    assert flaky.patches > 2
    assert accepted == 1
