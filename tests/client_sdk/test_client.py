"""The HTTP client: credentials, retries (and what is never retried), named errors, downloads,
resumable uploads across dropped connections and restarts, and the checks before training."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import httpx
import pytest

from fedlora_client import FedloraClient, Participant, RetryPolicy, participate
from fedlora_client import protocol as p
from fedlora_client._credentials import Credentials
from fedlora_client._errors import (
    ArtifactIntegrityError,
    AuthenticationError,
    ConfigError,
    ConflictError,
    FingerprintMismatchError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PrivacyBudgetExceededError,
    RateLimitedError,
    ServerError,
    ServerUnavailableError,
    TransportError,
    UnprocessableError,
)
from tests.client_sdk.conftest import lm_records, membership, method_task
from tests.client_sdk.fake_server import API_KEY, TOKEN, FakeServer

FAST = RetryPolicy(attempts=3, backoff_min=0.001, backoff_max=0.01)
URL = "http://fedlora.test"


def client_for(server: FakeServer, state: Path, chunk: int = 1 << 20) -> FedloraClient:
    return FedloraClient(Credentials(URL, "c1", "o1", API_KEY), state_dir=state,
                         transport=server.transport(), retry=FAST, chunk_bytes=chunk)  # fmt: skip


def test_enroll_stores_credentials_user_only(tmp_path: Path) -> None:
    server = FakeServer()
    path = tmp_path / "cfg" / "credentials.json"
    client = FedloraClient.enroll(URL, TOKEN, credentials_path=path, transport=server.transport())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Credentials.load(path).api_key == API_KEY == client.credentials.api_key
    assert not list(path.parent.glob("*.tmp"))
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Credentials.load(path)
    with pytest.raises(AuthenticationError, match="enroll"):
        FedloraClient.enroll(URL, "wrong-token-0123456789", credentials_path=tmp_path / "x.json",
                             transport=server.transport(), retry=FAST)  # fmt: skip
    with pytest.raises(ConfigError, match="enroll"):
        Credentials.load(tmp_path / "absent.json")


@pytest.mark.parametrize("fault", [503, 502, 429, "drop"])
def test_transient_failures_are_retried(fault: object, tmp_path: Path) -> None:
    server = FakeServer(faults=[("GET", "memberships", fault), ("GET", "memberships", fault)])
    with client_for(server, tmp_path) as client:
        assert client.memberships() == []
    assert server.calls.count(("GET", p.Routes.MEMBERSHIPS)) == 3


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, ServerError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
        (422, UnprocessableError),
    ],
)
def test_client_errors_are_named_and_never_retried(
    status: int, error: type[Exception], tmp_path: Path
) -> None:
    server = FakeServer(faults=[("GET", "memberships", status)])
    with client_for(server, tmp_path) as client, pytest.raises(error) as caught:
        client.memberships()
    assert server.calls.count(("GET", p.Routes.MEMBERSHIPS)) == 1
    assert f"HTTP {status}" in str(caught.value)
    assert "injected" in str(caught.value)


@pytest.mark.parametrize(
    ("fault", "error"),
    [(503, ServerUnavailableError), (429, RateLimitedError), ("drop", TransportError)],
)
def test_retries_give_up_with_a_named_error(
    fault: object, error: type[Exception], tmp_path: Path
) -> None:
    server = FakeServer(faults=[("GET", "memberships", fault)] * 5)
    with client_for(server, tmp_path) as client, pytest.raises(error):
        client.memberships()
    assert server.calls.count(("GET", p.Routes.MEMBERSHIPS)) == FAST.attempts


def test_long_poll_without_a_task_returns_none(tmp_path: Path) -> None:
    with client_for(FakeServer(), tmp_path) as client:
        assert client.next_task(wait=0) is None


def _server_with_task(llama_spec: p.ModelSpec, **kw: object) -> tuple[FakeServer, p.TaskAssignment]:
    server = FakeServer(memberships=[membership(llama_spec, p.TaskType.CAUSAL_LM)])
    task = method_task(server, llama_spec, p.TaskType.CAUSAL_LM, "fedavg", **kw)  # type: ignore[arg-type]
    server.tasks.append(task)
    return server, task


def test_tampered_download_is_refused(llama_spec: p.ModelSpec, tmp_path: Path) -> None:
    server, task = _server_with_task(llama_spec)
    server.artifacts[task.plan.start.sha256] = b"x" * task.plan.start.size
    with client_for(server, tmp_path) as client:
        assert client.next_task(0) is not None
        with pytest.raises(ArtifactIntegrityError, match="Nothing was used"):
            client.download(task.task_id, "start", task.plan.start, tmp_path / "a.safetensors")
    assert not (tmp_path / "a.safetensors").exists()


def _stage(client: FedloraClient, task_id: str, size: int = 10_000) -> bytes:
    body = bytes(range(256)) * (size // 256) + b"end"
    manifest = p.UploadManifest(task_id=task_id, base_model_fingerprint="0" * 64,
                                lora=p.LoraSpec(rank=4, lora_alpha=8),
                                sha256=hashlib.sha256(body).hexdigest(), size=len(body),
                                num_examples=10)  # fmt: skip
    client.stage_upload(manifest, body)
    return body


@pytest.mark.parametrize("fault", ["drop", "drop-after", 503])
def test_connection_drops_mid_upload_and_one_update_is_accepted(
    fault: object, tmp_path: Path
) -> None:
    server = FakeServer(nth_faults={("PATCH", 3): fault})  # chunks 1-2 go through, 3 fails
    with client_for(server, tmp_path, chunk=1000) as client:
        sent = _stage(client, "t1")
        session = client.upload("t1")
        assert client.pending_uploads() == []
    assert session.status == "accepted"
    assert list(server.accepted) == ["t1"]
    assert server.accepted["t1"] == sent
    assert len(server.uploads) == 1
    assert ("HEAD", f"/api/v1/client/uploads/{session.upload_id}") in server.calls
    assert sum(1 for m, _ in server.calls if m == "PATCH") == 10 + (
        fault != "drop-after"
    )  # 10 chunks


def test_a_restarted_client_resumes_the_staged_upload(tmp_path: Path) -> None:
    server = FakeServer(faults=[("PATCH", "uploads", "drop")] * 40)  # the network is down
    with client_for(server, tmp_path, chunk=1000) as client:
        sent = _stage(client, "t9")
        with pytest.raises(TransportError):
            client.upload("t9", max_resyncs=2)
    assert client.pending_uploads() == ["t9"]
    server.faults.clear()  # network back; a new process with the same state dir
    with client_for(server, tmp_path, chunk=1000) as restarted:
        from fedlora_client._run import resume_pending

        participant = Participant(restarted, tmp_path, [], progress=False)
        assert resume_pending(participant) == 1
    assert server.accepted == {"t9": sent}
    assert restarted.pending_uploads() == []
    assert len(server.uploads) == 1  # the idempotency key reused the session


def test_fingerprint_mismatch_stops_before_any_task(
    tiny_llama: Path, llama_spec: p.ModelSpec, tmp_path: Path
) -> None:
    other = llama_spec.model_copy(update={"fingerprint": "f" * 64})
    server = FakeServer(memberships=[membership(other, p.TaskType.CAUSAL_LM)])
    with client_for(server, tmp_path) as client:
        participant = Participant(client, tiny_llama, lm_records(), progress=False)
        with pytest.raises(FingerprintMismatchError, match="exact checkpoint"):
            participate(participant, wait=0, stop_when_idle=True)
    assert ("GET", p.Routes.NEXT_TASK) not in server.calls


def test_a_task_past_the_epsilon_budget_is_refused(
    tiny_llama: Path, llama_spec: p.ModelSpec, tmp_path: Path
) -> None:
    server, task = _server_with_task(llama_spec, dp=p.DPMode.CLIENT)
    server.tasks[0] = task.model_copy(update={"plan": task.plan.model_copy(update={
        "dp": task.plan.dp.model_copy(update={"epsilon_budget": 0.5})})})  # fmt: skip
    with client_for(server, tmp_path) as client:
        participant = Participant(client, tiny_llama, lm_records(), progress=False)
        with pytest.raises(PrivacyBudgetExceededError, match=r"exceed the budget 0\.500"):
            participate(participant, wait=0, stop_when_idle=True)
    assert server.uploads == {}
    assert not (tmp_path / "privacy_ledger.json").exists()


def test_injectable_transport_sees_auth_and_timeouts(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    client = FedloraClient(Credentials(URL, "c", "o", API_KEY), state_dir=tmp_path,
                           transport=httpx.MockTransport(handler))  # fmt: skip
    assert client.next_task(wait=5) is None
    assert seen[0].headers["Authorization"] == f"Bearer {API_KEY}"
    assert seen[0].url.params["wait"] == "5"
    assert seen[0].extensions["timeout"]["read"] == 35.0


def test_a_task_lost_before_upload_is_dropped_not_fatal(
    tiny_llama: Path, llama_spec: p.ModelSpec, tmp_path: Path
) -> None:
    from fedlora_client import run_once

    server, _task = _server_with_task(llama_spec)
    server.faults.append(("POST", "uploads", 404))  # the lease expired while training
    events: list[str] = []
    with client_for(server, tmp_path) as client:
        participant = Participant(client, tiny_llama, lm_records(), progress=False)
        assert run_once(participant, wait=0, on_event=lambda k, i: events.append(k)) is None
        assert client.pending_uploads() == []
    assert events == ["task", "trained", "task_lost"]
    assert server.accepted == {}


def test_the_servers_record_of_spent_epsilon_is_a_floor(
    tiny_llama: Path, llama_spec: p.ModelSpec, tmp_path: Path
) -> None:
    server, _task = _server_with_task(llama_spec, dp=p.DPMode.CLIENT)
    server.memberships[0] = server.memberships[0].model_copy(update={"epsilon_spent": 9.0})
    with client_for(server, tmp_path) as client:  # a fresh state dir: the local ledger is empty
        participant = Participant(client, tiny_llama, lm_records(), progress=False)
        with pytest.raises(PrivacyBudgetExceededError, match=r"epsilon spent 9\.000"):
            participate(participant, wait=0, stop_when_idle=True)
    assert server.uploads == {}


def test_a_federation_joined_while_running_gets_the_fingerprint(
    tiny_llama: Path, llama_spec: p.ModelSpec, tmp_path: Path
) -> None:
    server = FakeServer()  # not a member of anything yet
    polls = 0

    def on_event(kind: str, info: dict[str, object]) -> None:
        nonlocal polls
        if kind == "idle":
            polls += 1
            if polls == 1:  # the admin adds the client to a federation meanwhile
                server.memberships.append(membership(llama_spec, p.TaskType.CAUSAL_LM))
            if polls == 2:
                server.tasks.append(method_task(server, llama_spec, p.TaskType.CAUSAL_LM, "fedavg"))

    with client_for(server, tmp_path) as client:
        participant = Participant(client, tiny_llama, lm_records(), progress=False)
        assert participate(participant, wait=0, max_rounds=1, on_event=on_event) == 1
    assert server.fingerprints == {"f1": llama_spec.fingerprint}
    assert list(server.accepted) == ["t1"]
