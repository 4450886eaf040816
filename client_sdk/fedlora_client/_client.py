"""``FedloraClient``: the client-facing routes of :class:`fedlora_client.protocol.Routes`.

Every call has explicit timeouts and the retry policy of ``_http``; the HTTP transport is
injectable (``httpx.MockTransport`` or ``httpx.ASGITransport`` in tests). Downloads are streamed
to disk and checked against the plan's sha256 and size. Uploads are resumable sessions: the
state (idempotency key, upload id, body) is persisted under ``state_dir`` before the first byte
is sent, so a dropped connection or a restarted client resumes where the server stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import ValidationError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from fedlora_client import protocol as p
from fedlora_client._credentials import DEFAULT_CREDENTIALS_PATH, Credentials
from fedlora_client._errors import (
    ArtifactIntegrityError,
    ConfigError,
    ConflictError,
    NotFoundError,
    ServerUnavailableError,
    TransportError,
)
from fedlora_client._http import DEFAULT_TIMEOUT, Http, RetryPolicy, transport_error

CHUNK_BYTES = 4 * 1024 * 1024
_RESYNC = (TransportError, ServerUnavailableError, ConflictError)


def enroll_request(
    join_token: str, name: str, hardware: p.HardwareProfile | None = None
) -> p.EnrollRequest:
    """The enrollment body, or a :class:`ConfigError` naming what is wrong (never the token)."""
    try:
        return p.EnrollRequest(
            join_token=join_token, name=name, hardware=hardware or p.HardwareProfile()
        )
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        if any(e["loc"][:1] == ("join_token",) for e in errors):
            problems += " (copy the whole one-time join token the federation admin issued)"
        raise ConfigError(f"cannot enroll: {problems}") from None


class FedloraClient:
    """An enrolled client of one fedlora server."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        state_dir: str | Path = "~/.cache/fedlora",
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.credentials = credentials
        self.state_dir = Path(state_dir).expanduser()
        self.chunk_bytes = chunk_bytes
        self.http = Http(
            credentials.server_url,
            api_key=credentials.api_key,
            transport=transport,
            timeout=timeout,
            retry=retry,
        )

    def __enter__(self) -> FedloraClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    @classmethod
    def enroll(
        cls,
        server_url: str,
        join_token: str,
        *,
        name: str = "fedlora-client",
        hardware: p.HardwareProfile | None = None,
        credentials_path: str | Path = DEFAULT_CREDENTIALS_PATH,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> FedloraClient:
        """Exchange a one-time join token for credentials, saved with mode 0600."""
        body = enroll_request(join_token, name, hardware)
        http = Http(server_url, transport=transport, retry=retry)
        try:
            response = http.request("POST", p.Routes.ENROLL, json=body.model_dump(mode="json"))
        finally:
            http.close()
        enrolled = p.EnrollResponse.model_validate(response.json())
        credentials = Credentials(
            server_url, enrolled.client_id, enrolled.organization_id, enrolled.api_key
        )
        credentials.save(credentials_path)
        return cls(credentials, transport=transport, retry=retry, **kwargs)

    @classmethod
    def from_file(cls, path: str | Path = DEFAULT_CREDENTIALS_PATH, **kwargs: Any) -> FedloraClient:
        return cls(Credentials.load(path), **kwargs)

    # ------------------------------------------------------------------ membership and tasks

    def me(self) -> dict[str, Any]:
        result: dict[str, Any] = self.http.request("GET", p.Routes.ME).json()
        return result

    def report_hardware(self, hardware: p.HardwareProfile) -> None:
        self.http.request("PATCH", p.Routes.ME, json=hardware.model_dump(mode="json"))

    def memberships(self) -> list[p.MembershipInfo]:
        body = self.http.request("GET", p.Routes.MEMBERSHIPS).json()
        items = body.get("data", body) if isinstance(body, dict) else body
        return [p.MembershipInfo.model_validate(item) for item in items]

    def report_fingerprint(self, federation_id: str, fingerprint: str) -> None:
        url = p.Routes.MEMBERSHIP.format(federation_id=federation_id)
        report = p.MembershipReport(fingerprint=fingerprint)
        self.http.request("PUT", url, json=report.model_dump(mode="json"))

    def next_task(self, wait: float = 30.0) -> p.TaskAssignment | None:
        """The task this client still holds from an earlier run (see :meth:`held_task`), else
        long-poll up to ``wait`` seconds for a new one; None when there is none.

        A leased task's id is remembered under ``state_dir/tasks`` until it is uploaded or
        released, so a restarted client resumes it instead of leaving it leased to nobody.
        """
        held = self.held_task()
        if held is not None:
            return held
        timeout = httpx.Timeout(DEFAULT_TIMEOUT.connect, read=wait + 30.0)
        response = self.http.request(
            "GET", p.Routes.NEXT_TASK, params={"wait": wait}, timeout=timeout
        )
        if response.status_code == 204 or not response.content:
            return None
        task = p.TaskAssignment.model_validate(response.json())
        self._remember_task(task)
        return task

    def task(self, task_id: str) -> p.TaskAssignment:
        """A task this client holds (409 :class:`ConflictError` once it is no longer leased)."""
        response = self.http.request("GET", p.Routes.TASK.format(task_id=task_id))
        return p.TaskAssignment.model_validate(response.json())

    def _held_path(self, task_id: str) -> Path:
        return self.state_dir / "tasks" / f"{task_id}.json"

    def _remember_task(self, task: p.TaskAssignment) -> None:
        path = self._held_path(task.task_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"task_id": task.task_id}), encoding="utf-8")

    def forget_task(self, task_id: str) -> None:
        """Stop remembering ``task_id`` (uploaded, released or lost)."""
        self._held_path(task_id).unlink(missing_ok=True)

    def held_task(self) -> p.TaskAssignment | None:
        """A task leased by an earlier run that the server says this client still holds.

        Remembered tasks the server no longer leases to us (uploaded, released, re-offered
        after the lease expired, or their round closed) are forgotten; a task whose update is
        staged is left to :meth:`upload`.
        """
        staged = set(self.pending_uploads())
        for path in sorted((self.state_dir / "tasks").glob("*.json")):
            task_id = path.stem
            if task_id in staged:
                continue
            try:
                return self.task(task_id)
            except (ConflictError, NotFoundError):
                self.forget_task(task_id)
        return None

    def release_task(self, task_id: str, reason: str) -> None:
        """Give a leased task back with ``reason`` (the admin sees it): the round stops
        waiting for this client. A task already uploaded or closed is only forgotten."""
        body = p.TaskRelease(reason=reason[:1024] or "released").model_dump(mode="json")
        with contextlib.suppress(ConflictError, NotFoundError):  # nothing left to give back
            self.http.request("POST", p.Routes.RELEASE.format(task_id=task_id), json=body)
        self.forget_task(task_id)

    def report_evaluation(self, task_id: str, evaluation: p.GlobalEvaluation) -> None:
        """Send this client's evaluation of the global adapter ``task_id`` names."""
        url = p.Routes.EVALUATION.format(task_id=task_id)
        self.http.request("POST", url, json=evaluation.model_dump(mode="json"))

    def report(self, task_id: str, metrics: dict[str, float]) -> None:
        body = p.TaskReport(metrics=metrics).model_dump(mode="json")
        self.http.request("POST", p.Routes.REPORT.format(task_id=task_id), json=body)

    # ------------------------------------------------------------------ downloads

    def download(
        self,
        task_id: str,
        kind: Literal["start", "merge", "global"],
        ref: p.ArtifactRef,
        dest: Path,
    ) -> Path:
        """Stream an artifact to ``dest``; raise :class:`ArtifactIntegrityError` on a bad hash."""
        route = {
            "start": p.Routes.START_ADAPTER,
            "merge": p.Routes.MERGE_ADAPTER,
            "global": p.Routes.GLOBAL_ADAPTER,
        }[kind]
        url = route.format(task_id=task_id)
        retrying = Retrying(
            stop=stop_after_attempt(self.http.retry.attempts),
            wait=wait_random_exponential(multiplier=self.http.retry.backoff_min, max=30),
            retry=retry_if_exception_type((httpx.TransportError, ServerUnavailableError)),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._download_once(url, ref, dest)
        except httpx.TransportError as exc:
            raise transport_error(exc, str(self.http.client.base_url)) from exc
        return dest

    def _download_once(self, url: str, ref: p.ArtifactRef, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        digest, size = hashlib.sha256(), 0
        with self.http.stream("GET", url) as response, part.open("wb") as out:
            announced = response.headers.get(p.CONTENT_SHA256_HEADER)
            for chunk in response.iter_bytes(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        got = digest.hexdigest()
        if got != ref.sha256 or size != ref.size or (announced and announced != got):
            part.unlink(missing_ok=True)
            raise ArtifactIntegrityError(
                f"download {url} has sha256 {got[:12]}... and {size} bytes; the plan announced "
                f"{ref.sha256[:12]}... and {ref.size} bytes. Nothing was used; run again, and "
                "tell the federation admin if it persists"
            )
        part.replace(dest)

    # ------------------------------------------------------------------ resumable uploads

    def _upload_state_path(self, task_id: str) -> Path:
        return self.state_dir / "uploads" / f"{task_id}.json"

    def stage_upload(self, manifest: p.UploadManifest, body: bytes) -> Path:
        """Persist body + manifest + a fresh idempotency key before anything is sent."""
        state_path = self._upload_state_path(manifest.task_id)
        state_path.parent.mkdir(parents=True, exist_ok=True)
        body_path = state_path.with_suffix(".safetensors")
        body_path.write_bytes(body)
        state = {
            "manifest": manifest.model_dump(mode="json"),
            "idempotency_key": str(uuid.uuid4()),
            "upload_id": None,
        }
        state_path.write_text(json.dumps(state), encoding="utf-8")
        return state_path

    def pending_uploads(self) -> list[str]:
        """Task ids with a staged upload not yet accepted (resume them with :meth:`upload`)."""
        return sorted(path.stem for path in (self.state_dir / "uploads").glob("*.json"))

    def discard_upload(self, task_id: str) -> None:
        """Delete the staged upload of ``task_id`` (sent, or refused) and forget the task."""
        state_path = self._upload_state_path(task_id)
        state_path.with_suffix(".safetensors").unlink(missing_ok=True)
        state_path.unlink(missing_ok=True)
        self.forget_task(task_id)

    def upload(self, task_id: str, *, max_resyncs: int = 20) -> p.UploadSession:
        """Send the staged upload of ``task_id``, resuming from the server's offset."""
        state_path = self._upload_state_path(task_id)
        state = json.loads(state_path.read_text(encoding="utf-8"))
        body = state_path.with_suffix(".safetensors").read_bytes()
        session = self._open_session(task_id, state)
        if state["upload_id"] != session.upload_id:
            state["upload_id"] = session.upload_id
            state_path.write_text(json.dumps(state), encoding="utf-8")
        resyncs = 0
        while session.status != "accepted":
            end = min(session.offset + self.chunk_bytes, len(body))
            try:
                response = self.http.request(
                    "PATCH",
                    p.Routes.UPLOAD.format(upload_id=session.upload_id),
                    content=body[session.offset : end],
                    headers={
                        p.UPLOAD_OFFSET_HEADER: str(session.offset),
                        "Content-Type": "application/offset+octet-stream",
                    },
                    retry=False,
                )
                session = p.UploadSession.model_validate(response.json())
            except _RESYNC:
                resyncs += 1
                if resyncs > max_resyncs:
                    raise
                session = self._resync(task_id, state, session)
        self.discard_upload(task_id)
        return session

    def _open_session(self, task_id: str, state: dict[str, Any]) -> p.UploadSession:
        response = self.http.request(
            "POST",
            p.Routes.UPLOADS.format(task_id=task_id),
            json=state["manifest"],
            headers={p.IDEMPOTENCY_HEADER: state["idempotency_key"]},
        )
        return p.UploadSession.model_validate(response.json())

    def _resync(
        self, task_id: str, state: dict[str, Any], session: p.UploadSession
    ) -> p.UploadSession:
        """Ask the server where the upload stands (HEAD), after a failed or refused chunk."""
        head = self.http.request("HEAD", p.Routes.UPLOAD.format(upload_id=session.upload_id))
        offset = int(head.headers.get(p.UPLOAD_OFFSET_HEADER, session.offset))
        if offset >= session.size:  # complete: the idempotent POST returns the final session
            return self._open_session(task_id, state)
        return session.model_copy(update={"offset": offset})
