"""Client upload routes: open a session (idempotent), HEAD its offset, PATCH chunks.

Bytes stream from the request to a partial file (never held whole in memory); the last chunk
triggers validation (``api.uploads``) and, if it passes, the update is recorded once.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from api.deps import CurrentClient, EnqueuerDep, SessionDep, SettingsDep
from api.errors import ConflictError
from api.routes.client import rel
from api.services import rounds, updates
from api.storage import ArtifactStore, DigestMismatchError
from api.uploads import UploadRejected, accept_partial_upload
from fedlora_client.protocol import (
    IDEMPOTENCY_HEADER,
    UPLOAD_OFFSET_HEADER,
    Routes,
    UploadManifest,
    UploadSession,
)

router = APIRouter(tags=["client"])


@router.post(rel(Routes.UPLOADS), status_code=status.HTTP_201_CREATED)
def create_upload(
    task_id: uuid.UUID,
    manifest: UploadManifest,
    request: Request,
    client: CurrentClient,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str,
        Header(
            alias=IDEMPOTENCY_HEADER,
            description="Required: 8-128 characters [A-Za-z0-9._:-] (e.g. a UUID) naming this "
            "upload; send the same key when you retry and you get the same session back.",
        ),
    ],
) -> UploadSession:
    """Open an upload session for a leased task; the same key returns the same session.

    The ``Idempotency-Key`` header is required (422 without it, 400 if malformed).
    """
    return updates.begin_upload(
        session=session,
        store=request.app.state.store,
        settings=settings,
        client=client,
        task_id=task_id,
        idempotency_key=idempotency_key,
        manifest=manifest,
    )


@router.head(rel(Routes.UPLOAD))
def upload_offset(
    upload_id: uuid.UUID, request: Request, client: CurrentClient, session: SessionDep
) -> Response:
    """``Upload-Offset``: bytes received so far; resume the PATCH from there."""
    row = updates.client_upload(session=session, client=client, upload_id=upload_id)
    offset = updates.current_offset(request.app.state.store, row)
    return Response(
        headers={UPLOAD_OFFSET_HEADER: str(offset), "Upload-Length": str(row.size)},
        status_code=status.HTTP_200_OK,
    )


@router.patch(rel(Routes.UPLOAD))
async def upload_chunk(
    upload_id: uuid.UUID,
    request: Request,
    client: CurrentClient,
    settings: SettingsDep,
    enqueue: EnqueuerDep,
    upload_offset: Annotated[int, Header(alias=UPLOAD_OFFSET_HEADER, ge=0)],
) -> UploadSession:
    """Append the body at ``Upload-Offset``; the final chunk validates and accepts the update."""
    factory = request.app.state.session_factory
    store: ArtifactStore = request.app.state.store

    def load() -> tuple[UploadSession, dict[str, tuple[int, ...]], str]:
        with factory() as session:
            row = updates.client_upload(session=session, client=client, upload_id=upload_id)
            shapes = updates.expected_shapes(session=session, row=row)
            return updates.session_view(row), shapes, str(row.manifest["sha256"])

    view, shapes, sha256 = await run_in_threadpool(load)
    if view.status == "accepted":
        return view
    appender = await run_in_threadpool(
        store.append_partial, str(upload_id), offset=upload_offset, max_bytes=view.size
    )
    try:
        async for chunk in request.stream():
            if chunk:
                appender.write(chunk)
    finally:
        appender.close()
    offset = await run_in_threadpool(store.partial_size, str(upload_id))
    if offset < view.size:
        return view.model_copy(update={"offset": offset})

    def forget() -> None:
        with factory() as session:
            updates.forget_upload(session=session, upload_id=upload_id)

    def finish() -> tuple[UploadSession, uuid.UUID]:
        try:
            ref, summary = accept_partial_upload(
                store,
                str(upload_id),
                expected_shapes=shapes,
                max_header_bytes=settings.max_header_bytes,
                expected_sha256=sha256,
            )
        except (UploadRejected, DigestMismatchError):
            forget()  # the store deleted the bytes; the session is over, nothing remains
            raise
        with factory() as session:
            try:
                return updates.accept_update(
                    session=session,
                    client=client,
                    upload_id=upload_id,
                    sha256=ref.sha256,
                    summary=summary,
                )
            except ConflictError:
                forget()  # lease lost or round closed: this session can never be accepted
                raise

    accepted, round_id = await run_in_threadpool(finish)

    def close() -> None:
        with factory() as session:
            rounds.maybe_close_round(session=session, round_id=round_id, enqueue=enqueue)

    await run_in_threadpool(close)
    return accepted
