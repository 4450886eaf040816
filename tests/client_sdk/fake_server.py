"""An in-memory server speaking ``protocol.Routes``, as an ``httpx.MockTransport`` handler.

It follows the contract the API implements (enroll, memberships, long-poll, artifacts by hash,
resumable uploads with an idempotency key, reports) and can inject faults: dropped connections
(after the server applied the chunk, so the client must resync), 429/503 answers.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from fedlora_client import protocol as p

API_KEY = "k" * 32
TOKEN = "join-token-0123456789"


@dataclass
class Upload:
    upload_id: str
    task_id: str
    manifest: p.UploadManifest
    data: bytearray = field(default_factory=bytearray)
    update_id: str | None = None

    def session(self) -> p.UploadSession:
        return p.UploadSession(
            upload_id=self.upload_id,
            offset=len(self.data),
            size=self.manifest.size,
            status="accepted" if self.update_id else "receiving",
            update_id=self.update_id,
        )


@dataclass
class FakeServer:
    memberships: list[p.MembershipInfo] = field(default_factory=list)
    tasks: list[p.TaskAssignment] = field(default_factory=list)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, Upload] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    accepted: dict[str, bytes] = field(default_factory=dict)
    reports: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluations: dict[str, p.GlobalEvaluation] = field(default_factory=dict)
    released: dict[str, str] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    faults: list[tuple[str, str, Any]] = field(default_factory=list)
    """(method, path regex, fault): fault is an int status, or 'drop' / 'drop-after'."""
    nth_faults: dict[tuple[str, int], Any] = field(default_factory=dict)
    """(method, n) -> fault for the n-th (1-based) request with that method."""
    issued: dict[str, p.TaskAssignment] = field(default_factory=dict)
    hardware: p.HardwareProfile | None = None

    def add_artifact(self, body: bytes, lora: p.LoraSpec) -> p.ArtifactRef:
        digest = hashlib.sha256(body).hexdigest()
        self.artifacts[digest] = body
        return p.ArtifactRef(sha256=digest, size=len(body), lora=lora)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def _fault(self, request: httpx.Request) -> Any:
        nth = sum(1 for method, _ in self.calls if method == request.method)
        if (request.method, nth) in self.nth_faults:
            return self.nth_faults.pop((request.method, nth))
        for i, (method, pattern, fault) in enumerate(self.faults):
            if method == request.method and re.search(pattern, request.url.path):
                del self.faults[i]
                return fault
        return None

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path))
        fault = self._fault(request)
        if fault == "drop":
            raise httpx.ReadError("connection reset by peer", request=request)
        if isinstance(fault, int):
            return httpx.Response(fault, json={"detail": "injected", "code": "x"})
        response = self._route(request)
        if fault == "drop-after":  # the server did the work, the client never hears back
            raise httpx.RemoteProtocolError("peer closed connection", request=request)
        return response

    def _route(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        prefix = p.API_PREFIX
        if path == p.Routes.ENROLL and method == "POST":
            body = p.EnrollRequest.model_validate_json(request.content)
            if body.join_token != TOKEN:
                return httpx.Response(401, json={"detail": "bad token"})
            return httpx.Response(
                201, json={"client_id": "c1", "organization_id": "o1", "api_key": API_KEY}
            )
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return httpx.Response(401, json={"detail": "invalid API key"})
        if path == p.Routes.ME and method == "PATCH":
            self.hardware = p.HardwareProfile.model_validate_json(request.content)
            return httpx.Response(200, json={"client_id": "c1"})
        if path == p.Routes.MEMBERSHIPS:
            return httpx.Response(200, json=[m.model_dump(mode="json") for m in self.memberships])
        if m := re.fullmatch(rf"{prefix}/client/memberships/([^/]+)", path):
            self.fingerprints[m[1]] = json.loads(request.content)["fingerprint"]
            return httpx.Response(204)
        if path == p.Routes.NEXT_TASK:
            if not self.tasks:
                return httpx.Response(204)
            task = self.tasks.pop(0)
            self.issued[task.task_id] = task
            return httpx.Response(200, json=task.model_dump(mode="json"))
        if m := re.fullmatch(rf"{prefix}/client/tasks/([^/]+)/(start|merge|global)-adapter", path):
            plan = self.issued[m[1]].plan
            ref = {"start": plan.start, "merge": plan.merge, "global": plan.global_adapter}[m[2]]
            assert ref is not None
            body = self.artifacts[ref.sha256]
            return httpx.Response(200, content=body, headers={p.CONTENT_SHA256_HEADER: ref.sha256})
        if m := re.fullmatch(rf"{prefix}/client/tasks/([^/]+)/uploads", path):
            return self._open_upload(m[1], request)
        if m := re.fullmatch(rf"{prefix}/client/uploads/([^/]+)", path):
            return self._upload_chunk(self.uploads[m[1]], request)
        if m := re.fullmatch(rf"{prefix}/client/tasks/([^/]+)/evaluation", path):
            self.evaluations[m[1]] = p.GlobalEvaluation.model_validate_json(request.content)
            return httpx.Response(200, json={"task_id": m[1], "status": "leased"})
        if m := re.fullmatch(rf"{prefix}/client/tasks/([^/]+)/release", path):
            self.released[m[1]] = json.loads(request.content)["reason"]
            return httpx.Response(200, json={"task_id": m[1], "status": "released"})
        if m := re.fullmatch(rf"{prefix}/client/tasks/([^/]+)/report", path):
            self.reports[m[1]] = json.loads(request.content)["metrics"]
            return httpx.Response(204)
        return httpx.Response(404, json={"detail": f"no route {method} {path}"})

    def _open_upload(self, task_id: str, request: httpx.Request) -> httpx.Response:
        key = request.headers.get(p.IDEMPOTENCY_HEADER)
        if not key:
            return httpx.Response(422, json={"detail": "Idempotency-Key header required"})
        if key in self.by_key:
            return httpx.Response(200, json=self.uploads[self.by_key[key]].session().model_dump())
        if task_id in {u.task_id for u in self.uploads.values()}:
            return httpx.Response(409, json={"detail": "task already has an upload"})
        upload = Upload(
            str(uuid.uuid4()), task_id, p.UploadManifest.model_validate_json(request.content)
        )
        self.uploads[upload.upload_id] = upload
        self.by_key[key] = upload.upload_id
        return httpx.Response(201, json=upload.session().model_dump())

    def _upload_chunk(self, upload: Upload, request: httpx.Request) -> httpx.Response:
        headers = {p.UPLOAD_OFFSET_HEADER: str(len(upload.data))}
        if request.method == "HEAD":
            return httpx.Response(200, headers=headers)
        if int(request.headers[p.UPLOAD_OFFSET_HEADER]) != len(upload.data):
            return httpx.Response(409, json={"detail": "offset mismatch"}, headers=headers)
        upload.data.extend(request.content)
        if len(upload.data) > upload.manifest.size:
            return httpx.Response(413, json={"detail": "too large"})
        if len(upload.data) == upload.manifest.size:
            if hashlib.sha256(upload.data).hexdigest() != upload.manifest.sha256:
                return httpx.Response(422, json={"detail": "sha256 mismatch"})
            upload.update_id = str(uuid.uuid4())
            self.accepted[upload.task_id] = bytes(upload.data)
        return httpx.Response(200, json=upload.session().model_dump())
