"""Admin: rounds, tasks, updates, global adapters (and their download), ledger, audit log."""

from __future__ import annotations

import uuid
from typing import Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from api.db import AuditLogEntry, GlobalAdapter, PrivacyLedgerEntry, Round, Task, Update
from api.deps import CurrentAdmin, EnqueuerDep, PageDep, SessionDep
from api.errors import NotFoundError
from api.schemas.common import ListPublic
from api.schemas.rounds import (
    AuditLogPublic,
    GlobalAdapterPublic,
    LedgerEntryPublic,
    RoundPublic,
    TaskPublic,
    TaskReleaseRequest,
    UpdatePublic,
    adapter_public,
    round_public,
)
from api.services import evaluations, task_release
from api.services.adapters import peft_folder_members, stream_tar, stream_zip
from api.services.common import get_or_404, page
from api.services.evaluations import Scoreboard
from api.services.federations import get_federation
from fedlora_client.protocol import TaskType

rounds = APIRouter(tags=["rounds"])
adapters = APIRouter(tags=["adapters"])
audit = APIRouter(tags=["audit"])


def _list(session: Any, stmt: sa.Select[Any], p: Any, schema: Any) -> Any:
    rows, count = page(session=session, stmt=stmt, skip=p.skip, limit=p.limit)
    return ListPublic(data=[schema.model_validate(r) for r in rows], count=count)


def _board(session: Any, federation_id: uuid.UUID) -> Scoreboard:
    fed = get_federation(session=session, federation_id=federation_id)
    return evaluations.scoreboard(
        session=session, federation_id=fed.id, task_type=TaskType(fed.task_type)
    )


@rounds.get("/federations/{federation_id}/rounds")
def list_rounds(
    federation_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin, p: PageDep
) -> ListPublic[RoundPublic]:
    """Every round, oldest first, with the federated evaluation of the adapter it published."""
    board = _board(session, federation_id)
    stmt = sa.select(Round).where(Round.federation_id == federation_id).order_by(Round.number)
    rows, count = page(session=session, stmt=stmt, skip=p.skip, limit=p.limit)
    return ListPublic(data=[round_public(r, board) for r in rows], count=count)


@rounds.get("/rounds/{round_id}")
def get_round(round_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin) -> RoundPublic:
    row = get_or_404(session=session, model=Round, object_id=round_id, kind="round")
    return round_public(row, _board(session, row.federation_id))


@rounds.get("/rounds/{round_id}/tasks")
def list_tasks(
    round_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin, p: PageDep
) -> ListPublic[TaskPublic]:
    get_or_404(session=session, model=Round, object_id=round_id, kind="round")
    stmt = sa.select(Task).where(Task.round_id == round_id).order_by(Task.client_id)
    result: ListPublic[TaskPublic] = _list(session, stmt, p, TaskPublic)
    return result


@rounds.post("/tasks/{task_id}/release")
def release_task(
    task_id: uuid.UUID,
    session: SessionDep,
    admin: CurrentAdmin,
    enqueue: EnqueuerDep,
    body: TaskReleaseRequest | None = None,
) -> TaskPublic:
    """Release a pending or leased task (a client that is gone or stuck): its round stops
    waiting for it and moves on with the others. 409 once the task was uploaded or closed."""
    task = task_release.release_task(
        session=session, task_id=task_id, reason=(body or TaskReleaseRequest()).reason,
        by="admin", admin=admin, enqueue=enqueue,
    )  # fmt: skip
    return TaskPublic.model_validate(task)


@rounds.get("/rounds/{round_id}/updates")
def list_updates(
    round_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin, p: PageDep
) -> ListPublic[UpdatePublic]:
    get_or_404(session=session, model=Round, object_id=round_id, kind="round")
    stmt = sa.select(Update).where(Update.round_id == round_id).order_by(Update.client_id)
    result: ListPublic[UpdatePublic] = _list(session, stmt, p, UpdatePublic)
    return result


@rounds.get("/federations/{federation_id}/tasks")
def list_federation_tasks(
    federation_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin, p: PageDep
) -> ListPublic[TaskPublic]:
    """Every task of the federation, oldest round first."""
    get_federation(session=session, federation_id=federation_id)
    stmt = (
        sa.select(Task)
        .join(Round, Round.id == Task.round_id)
        .where(Task.federation_id == federation_id)
        .order_by(Round.number, Task.client_id)
    )
    result: ListPublic[TaskPublic] = _list(session, stmt, p, TaskPublic)
    return result


@rounds.get("/federations/{federation_id}/updates")
def list_federation_updates(
    federation_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin, p: PageDep
) -> ListPublic[UpdatePublic]:
    """Every accepted update of the federation, in order of acceptance."""
    get_federation(session=session, federation_id=federation_id)
    stmt = (
        sa.select(Update)
        .where(Update.federation_id == federation_id)
        .order_by(Update.accepted_at, Update.id)
    )
    result: ListPublic[UpdatePublic] = _list(session, stmt, p, UpdatePublic)
    return result


@rounds.get("/federations/{federation_id}/ledger")
def list_ledger(
    federation_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin, p: PageDep
) -> ListPublic[LedgerEntryPublic]:
    """Epsilon spent per client per round."""
    get_federation(session=session, federation_id=federation_id)
    stmt = (
        sa.select(PrivacyLedgerEntry)
        .where(PrivacyLedgerEntry.federation_id == federation_id)
        .order_by(PrivacyLedgerEntry.created_at, PrivacyLedgerEntry.id)
    )
    result: ListPublic[LedgerEntryPublic] = _list(session, stmt, p, LedgerEntryPublic)
    return result


@adapters.get("/federations/{federation_id}/adapters")
def list_adapters(
    federation_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin, p: PageDep
) -> ListPublic[GlobalAdapterPublic]:
    """Every global adapter, oldest first, with its federated evaluation; the best and the
    latest are marked."""
    board = _board(session, federation_id)
    stmt = (
        sa.select(GlobalAdapter)
        .where(GlobalAdapter.federation_id == federation_id)
        .order_by(GlobalAdapter.round_number)
    )
    rows, count = page(session=session, stmt=stmt, skip=p.skip, limit=p.limit)
    return ListPublic(data=[adapter_public(r, board) for r in rows], count=count)


@adapters.get("/federations/{federation_id}/adapters/{which}")
def get_best_or_latest_adapter(
    federation_id: uuid.UUID,
    which: Literal["best", "latest"],
    session: SessionDep,
    admin: CurrentAdmin,
) -> GlobalAdapterPublic:
    """The best adapter by federated evaluation, or the latest (the final one once the
    federation completed); download either with ``/adapters/{adapter_id}/download``."""
    board = _board(session, federation_id)
    chosen = board.best if which == "best" else board.latest
    if chosen is None:
        raise NotFoundError(
            f"federation {federation_id} has no evaluated adapter yet: clients score each "
            "adapter when the next round starts, and the final one in the evaluation pass"
            if which == "best"
            else f"federation {federation_id} has no global adapter yet: no round completed"
        )
    row = get_or_404(session=session, model=GlobalAdapter, object_id=chosen, kind="adapter")
    return adapter_public(row, board)


@adapters.get("/adapters/{adapter_id}")
def get_adapter(
    adapter_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin
) -> GlobalAdapterPublic:
    row = get_or_404(session=session, model=GlobalAdapter, object_id=adapter_id, kind="adapter")
    return adapter_public(row, _board(session, row.federation_id))


_ARCHIVES = {"tar": ("application/x-tar", stream_tar), "zip": ("application/zip", stream_zip)}


@adapters.get(
    "/adapters/{adapter_id}/download",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-tar": {}, "application/zip": {}},
            "description": "A PEFT folder: adapter_config.json + adapter_model.safetensors.",
        }
    },
)
def download_adapter(
    adapter_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    admin: CurrentAdmin,
    format: Literal["tar", "zip"] = "tar",
) -> StreamingResponse:
    """The global adapter as a PEFT folder, streamed as a tar (default) or zip archive."""
    row = get_or_404(session=session, model=GlobalAdapter, object_id=adapter_id, kind="adapter")
    folder = f"adapter-round-{row.round_number}"
    media_type, stream = _ARCHIVES[format]
    body = stream(store=request.app.state.store, folder=folder, members=peft_folder_members(row))
    return StreamingResponse(
        body,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{folder}.{format}"'},
    )


@audit.get("/audit-log")
def list_audit_log(
    session: SessionDep, admin: CurrentAdmin, p: PageDep
) -> ListPublic[AuditLogPublic]:
    """Admin actions, newest first."""
    stmt = sa.select(AuditLogEntry).order_by(AuditLogEntry.created_at.desc(), AuditLogEntry.id)
    result: ListPublic[AuditLogPublic] = _list(session, stmt, p, AuditLogPublic)
    return result
