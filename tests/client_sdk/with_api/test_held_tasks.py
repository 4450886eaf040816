"""A client never blocks its round on its own failure (issue #16 item 3), against the real API.

* bad data or model: found before a task is leased, so the client never holds one;
* a restart: the task an earlier run leased is resumed, not left leased to nobody;
* a failure after leasing: the task is released at once, with a reason the admin sees.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.db import Round, Task
from api.services import rounds
from api.storage import ArtifactStore
from fedlora_client import ClientConfig, FedloraClient, Participant, participate, run
from fedlora_client import protocol as p
from fedlora_client._errors import (
    DataColumnError,
    DataFileNotFoundError,
    PrivacyBudgetExceededError,
)
from tests.client_sdk.conftest import lm_records
from tests.client_sdk.with_api.test_against_api import FAST, AppTransport, _federation, _plan


class Setup:
    """An enrolled member of a running federation whose round 1 waits for it."""

    def __init__(
        self, api: TestClient, admin: dict[str, str], store: ArtifactStore,
        sessions: sessionmaker[Session], spec: p.ModelSpec, tiny_llama: Path, tmp_path: Path,
    ) -> None:  # fmt: skip
        self.api, self.admin, self.sessions, self.tmp = api, admin, sessions, tmp_path
        self.model = tiny_llama
        org, self.fid = _federation(api, admin, spec)
        r = api.post("/api/v1/join-tokens", json={"organization_id": org}, headers=admin)
        self.transport = AppTransport(api._transport)
        client = FedloraClient.enroll(
            "http://testserver", r.json()["token"], name="sdk", retry=FAST,
            credentials_path=tmp_path / "creds.json", state_dir=tmp_path / "state",
            transport=self.transport,
        )  # fmt: skip
        self.client_id = client.credentials.client_id
        r = api.post(f"/api/v1/federations/{self.fid}/memberships",
                     json={"client_id": self.client_id, "rank_budget": 4},
                     headers=admin)  # fmt: skip
        assert r.status_code == 201, r.text
        # an earlier, healthy run reported the model's fingerprint: the client is eligible
        client.report_fingerprint(self.fid, spec.fingerprint)
        client.http.close()
        assert api.post(f"/api/v1/federations/{self.fid}/start", headers=admin).status_code == 200
        self.store, self.spec = store, spec
        self.round_id = uuid.uuid4()

    def open_round(self, dp: p.DPMode = p.DPMode.NONE) -> None:
        """What the worker's open_round job does: round 1 with a FedAvg task for the client."""
        plan = _plan(self.store, self.spec, "fedavg")
        if dp is not p.DPMode.NONE:
            plan = plan.model_copy(update={"dp": p.DPPlan(
                mode=dp, noise_multiplier=1.0, clip_norm=1.0, epsilon_budget=50.0,
                planned_rounds=5,
            )})  # fmt: skip
        with self.sessions() as session:
            todo = rounds.round_to_open(session=session, federation_id=uuid.UUID(self.fid))
            assert todo is not None
            rid = rounds.open_round(session=session, federation_id=uuid.UUID(self.fid),
                                    number=todo.number,
                                    plans={m.client_id: plan for m in todo.selected})  # fmt: skip
        assert rid is not None
        self.round_id = rid

    def sdk(self) -> FedloraClient:
        """A fresh client process's view: same credentials and state directory."""
        return FedloraClient.from_file(self.tmp / "creds.json", state_dir=self.tmp / "state",
                                       transport=self.transport, retry=FAST)  # fmt: skip

    def participant(self, data: Any, **kw: Any) -> Participant:
        return Participant(self.sdk(), self.model, data, progress=False, noise_seed=0, **kw)

    def task(self) -> Task:
        with self.sessions() as session:
            return session.query(Task).filter(Task.round_id == self.round_id).one()

    def round_state(self) -> str:
        with self.sessions() as session:
            return session.get_one(Round, self.round_id).state

    def admin_task_view(self) -> dict[str, Any]:
        r = self.api.get(f"/api/v1/rounds/{self.round_id}/tasks", headers=self.admin)
        assert r.status_code == 200, r.text
        (view,) = r.json()["data"]
        return dict(view)


@pytest.fixture
def setup(
    api: TestClient, admin_headers: dict[str, str], store: ArtifactStore,
    app_sessions: sessionmaker[Session], llama_spec: p.ModelSpec, tiny_llama: Path,
    tmp_path: Path,
) -> Setup:  # fmt: skip
    return Setup(api, admin_headers, store, app_sessions, llama_spec, tiny_llama, tmp_path)


def _write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _config(setup: Setup, data: Path) -> ClientConfig:
    return ClientConfig.model_validate({
        "credentials_path": setup.tmp / "creds.json", "state_dir": setup.tmp / "state",
        "model": {"path": setup.model}, "data": {"path": data},
        "run": {"wait_seconds": 1, "stop_when_idle": True},
    })  # fmt: skip


@pytest.mark.parametrize(
    ("records", "error"),
    [(None, DataFileNotFoundError), ([{"question": "q", "answer": "a"}], DataColumnError)],
    ids=["missing-file", "wrong-columns"],
)
def test_a_client_with_bad_data_stops_before_it_takes_a_task(
    setup: Setup, records: list[dict[str, object]] | None, error: type[Exception]
) -> None:
    setup.open_round()
    data = setup.tmp / "train.jsonl"
    if records is not None:
        _write_jsonl(data, records)
    with pytest.raises(error) as caught:
        run(_config(setup, data), transport=setup.transport, progress=False)
    assert str(data) in str(caught.value)  # the message names the file to fix
    task = setup.task()
    assert (task.status, task.lease_owner, task.lease_count) == ("pending", None, 0)
    assert setup.round_state() == "open"


def test_a_restarted_client_resumes_the_task_it_holds(setup: Setup) -> None:
    setup.open_round()
    first = setup.participant(lm_records())
    task = first.next_task(wait=1)  # leased; then the process dies before training
    assert task is not None
    first.client.http.close()
    r = setup.api.get("/api/v1/client/tasks/next", headers=_headers(setup))
    assert r.status_code == 204  # the server keeps it leased: a plain poll gets nothing

    events: list[tuple[str, dict[str, object]]] = []
    restarted = setup.participant(lm_records())
    with restarted.client:
        done = participate(restarted, wait=1, stop_when_idle=True,
                           on_event=lambda k, i: events.append((k, i)))  # fmt: skip
    assert done == 1
    assert ("task", True) in [(k, i.get("resumed")) for k, i in events]
    row = setup.task()
    assert (str(row.id), row.status, row.lease_count) == (task.task_id, "reported", 1)
    assert not list((setup.tmp / "state" / "tasks").glob("*.json"))  # nothing left to resume


def _headers(setup: Setup) -> dict[str, str]:
    creds = json.loads((setup.tmp / "creds.json").read_text())
    return {"Authorization": f"Bearer {creds['api_key']}"}


def test_a_client_that_fails_after_leasing_releases_the_task_with_its_reason(
    setup: Setup,
) -> None:
    # A local epsilon cap far below what the plan's client-level DP costs: the task is
    # refused only once it is leased and its plan known.
    setup.open_round(dp=p.DPMode.CLIENT)
    participant = setup.participant(lm_records(), epsilon_budget=1e-6)
    with participant.client, pytest.raises(PrivacyBudgetExceededError):
        participate(participant, wait=1, stop_when_idle=True)
    view = setup.admin_task_view()
    assert (view["status"], view["released_by"]) == ("released", "client")
    assert view["release_reason"].startswith("PrivacyBudgetExceededError: refusing the task")
    # min_clients=1 and no update left to wait for: the round ends now, not at its deadline
    assert setup.round_state() == "failed"
    assert not list((setup.tmp / "state" / "tasks").glob("*.json"))


def test_a_restart_with_broken_data_releases_the_task_an_earlier_run_held(setup: Setup) -> None:
    setup.open_round()
    first = setup.participant(lm_records())
    assert first.next_task(wait=1) is not None
    first.client.http.close()
    broken = setup.participant(setup.tmp / "moved-away.jsonl")
    with broken.client, pytest.raises(DataFileNotFoundError):
        participate(broken, wait=1, stop_when_idle=True)
    view = setup.admin_task_view()
    assert view["status"] == "released"
    assert view["release_reason"].startswith("DataFileNotFoundError: data file")
