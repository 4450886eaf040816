"""Client routes (``protocol.Routes``): enroll, me, memberships, tasks, downloads, report.

Every route is scoped to the calling client: anyone else's object answers 404.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.deps import CurrentClient, EnqueuerDep, SessionDep, SettingsDep
from api.errors import NotFoundError
from api.schemas.client import ClientSelf, TaskStatusPublic
from api.services import client_tasks, evaluations, identity, task_release
from fedlora_client.protocol import (
    API_PREFIX,
    CONTENT_SHA256_HEADER,
    EnrollRequest,
    EnrollResponse,
    GlobalEvaluation,
    HardwareProfile,
    MembershipInfo,
    MembershipReport,
    Routes,
    TaskAssignment,
    TaskRelease,
    TaskReport,
    TrainingPlan,
)

router = APIRouter(tags=["client"])
POLL_INTERVAL_SECONDS = 0.5


def rel(route: str) -> str:
    """A protocol route relative to the /api/v1 prefix the router is mounted under."""
    return route.removeprefix(API_PREFIX)


@router.post(rel(Routes.ENROLL), status_code=status.HTTP_201_CREATED)
def enroll(body: EnrollRequest, session: SessionDep) -> EnrollResponse:
    """Exchange a one-time join token for this client's API key (shown once)."""
    client, key = identity.enroll(session=session, body=body)
    return EnrollResponse(
        client_id=str(client.id), organization_id=str(client.organization_id), api_key=key
    )


@router.get(rel(Routes.ME))
def get_me(client: CurrentClient) -> ClientSelf:
    return ClientSelf.model_validate(client)


@router.patch(rel(Routes.ME))
def report_hardware(
    body: HardwareProfile, client: CurrentClient, session: SessionDep
) -> ClientSelf:
    """Report this machine's accelerator and memory."""
    return ClientSelf.model_validate(
        identity.report_hardware(session=session, client=client, hardware=body)
    )


@router.get(rel(Routes.MEMBERSHIPS))
def list_my_memberships(client: CurrentClient, session: SessionDep) -> list[MembershipInfo]:
    return client_tasks.list_memberships(session=session, client=client)


@router.put(rel(Routes.MEMBERSHIP))
def report_fingerprint(
    federation_id: uuid.UUID,
    body: MembershipReport,
    client: CurrentClient,
    session: SessionDep,
    enqueue: EnqueuerDep,
) -> MembershipInfo:
    """Report the local base model's fingerprint; a match makes this client eligible."""
    return client_tasks.report_fingerprint(
        session=session, client=client, federation_id=federation_id, body=body, enqueue=enqueue
    )


@router.get(
    rel(Routes.NEXT_TASK),
    response_model=TaskAssignment,
    responses={204: {"description": "No task within the wait; poll again."}},
)
async def next_task(
    request: Request,
    client: CurrentClient,
    settings: SettingsDep,
    wait: float = Query(default=0.0, ge=0, description="Seconds to wait for a task (capped)."),
) -> TaskAssignment | Response:
    """Lease this client's next task, waiting up to ``wait`` seconds (server-capped)."""
    factory = request.app.state.session_factory
    client_id = client.id
    deadline = time.monotonic() + min(wait, settings.long_poll_seconds)

    def attempt() -> TaskAssignment | None:
        with factory() as session:
            task = client_tasks.lease_next_task(
                session=session, client_id=client_id, lease_seconds=settings.lease_seconds
            )
            return None if task is None else client_tasks.assignment(session=session, task=task)

    while True:
        found = await run_in_threadpool(attempt)
        if found is not None:
            return found
        left = deadline - time.monotonic()
        if left <= 0 or await request.is_disconnected():
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        await asyncio.sleep(min(POLL_INTERVAL_SECONDS, left))


@router.get(rel(Routes.TASK))
def get_task(task_id: uuid.UUID, client: CurrentClient, session: SessionDep) -> TaskAssignment:
    """The assignment of a task this client holds (same lease): how a restarted client resumes.

    409 unless the task is leased by this client (uploaded, released, dropped or re-offered).
    """
    task = client_tasks.leased_task(session=session, client=client, task_id=task_id)
    return client_tasks.assignment(session=session, task=task)


def _stream_artifact(request: Request, sha256: str) -> StreamingResponse:
    store = request.app.state.store
    size = store.size(sha256)
    return StreamingResponse(
        store.iter_chunks(sha256),
        media_type="application/octet-stream",
        headers={CONTENT_SHA256_HEADER: sha256, "Content-Length": str(size)},
    )


_DOWNLOAD: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "safetensors"}
}


@router.get(rel(Routes.START_ADAPTER), response_class=StreamingResponse, responses=_DOWNLOAD)
def download_start_adapter(
    task_id: uuid.UUID, request: Request, client: CurrentClient, session: SessionDep
) -> StreamingResponse:
    """The safetensors this task's training starts from; its sha256 is in a header."""
    task = client_tasks.leased_task(session=session, client=client, task_id=task_id)
    plan = TrainingPlan.model_validate(task.plan)
    return _stream_artifact(request, plan.start.sha256)


@router.get(rel(Routes.MERGE_ADAPTER), response_class=StreamingResponse, responses=_DOWNLOAD)
def download_merge_adapter(
    task_id: uuid.UUID, request: Request, client: CurrentClient, session: SessionDep
) -> StreamingResponse:
    """FLoRA: the adapter to merge into the base weights before training."""
    task = client_tasks.leased_task(session=session, client=client, task_id=task_id)
    plan = TrainingPlan.model_validate(task.plan)
    if plan.merge is None:
        raise NotFoundError(f"task {task_id}'s plan has no merge adapter (only FLoRA has one)")
    return _stream_artifact(request, plan.merge.sha256)


@router.get(rel(Routes.GLOBAL_ADAPTER), response_class=StreamingResponse, responses=_DOWNLOAD)
def download_global_adapter(
    task_id: uuid.UUID, request: Request, client: CurrentClient, session: SessionDep
) -> StreamingResponse:
    """Federated evaluation: the published global adapter this task's plan names."""
    task = client_tasks.leased_task(session=session, client=client, task_id=task_id)
    plan = TrainingPlan.model_validate(task.plan)
    if plan.global_adapter is None:
        raise NotFoundError(f"task {task_id}'s plan names no global adapter (round 1 has none)")
    return _stream_artifact(request, plan.global_adapter.sha256)


@router.post(rel(Routes.EVALUATION))
def report_evaluation(
    task_id: uuid.UUID,
    body: GlobalEvaluation,
    client: CurrentClient,
    session: SessionDep,
    enqueue: EnqueuerDep,
) -> TaskStatusPublic:
    """This client's loss (and accuracy) of the global adapter its task names, on its own
    evaluation data; for an evaluation-only task, its result. Not covered by DP."""
    evaluations.record_evaluation(
        session=session, client=client, task_id=task_id, body=body, enqueue=enqueue
    )
    task = client_tasks.client_task(session=session, client=client, task_id=task_id)
    return TaskStatusPublic(task_id=str(task.id), status=task.status)


@router.post(rel(Routes.REPORT))
def report_task(
    task_id: uuid.UUID, body: TaskReport, client: CurrentClient, session: SessionDep
) -> TaskStatusPublic:
    """Evaluation metrics for a task whose update was accepted."""
    task = client_tasks.report_task(session=session, client=client, task_id=task_id, body=body)
    return TaskStatusPublic(task_id=str(task.id), status=task.status)


@router.post(rel(Routes.RELEASE))
def release_task(
    task_id: uuid.UUID,
    body: TaskRelease,
    client: CurrentClient,
    session: SessionDep,
    enqueue: EnqueuerDep,
) -> TaskStatusPublic:
    """Give back a task this client cannot train, with the reason the admin will see.

    The round stops waiting for it at once (409 if it was already uploaded or closed).
    """
    task = task_release.release_task(
        session=session, task_id=task_id, reason=body.reason, by="client", client=client,
        enqueue=enqueue,
    )  # fmt: skip
    return TaskStatusPublic(task_id=str(task.id), status=task.status)
