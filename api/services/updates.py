"""Client updates: resumable upload sessions keyed by an idempotency key, accepted once.

The bytes go through :mod:`api.storage` (a partial file per session, then content-addressed)
and :mod:`api.uploads` (the safetensors validator); this module keeps the database side:
who may upload for which task, the session's state, and the accepted update with its ledger
entry, all written in one transaction.
"""

from __future__ import annotations

import re
import uuid

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.config import Settings
from api.db import (
    Client,
    Membership,
    PrivacyLedgerEntry,
    Round,
    RoundState,
    Task,
    TaskStatus,
    Update,
    UploadSessionRow,
    UploadStatus,
    utcnow,
)
from api.errors import (
    BadRequestError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
)
from api.services.client_tasks import client_task, leased_task
from api.storage import ArtifactStore
from api.uploads import UploadSummary
from fedlora_client.protocol import TrainingPlan, UploadManifest, UploadSession

IDEMPOTENCY_KEY_RE = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


def session_view(row: UploadSessionRow, offset: int | None = None) -> UploadSession:
    return UploadSession(
        upload_id=str(row.id),
        offset=row.size if row.status == UploadStatus.ACCEPTED else (offset or row.offset),
        size=row.size,
        status="accepted" if row.status == UploadStatus.ACCEPTED else "receiving",
        update_id=str(row.update_id) if row.update_id else None,
    )


def _check_manifest(task: Task, manifest: UploadManifest, settings: Settings) -> None:
    plan = TrainingPlan.model_validate(task.plan)
    if manifest.task_id != str(task.id):
        raise InvalidInputError(
            f"manifest.task_id {manifest.task_id} differs from the task in the URL ({task.id})"
        )
    if manifest.base_model_fingerprint != plan.model.fingerprint:
        raise InvalidInputError(
            "manifest.base_model_fingerprint does not match the plan's model fingerprint: "
            "train on the federation's exact base model"
        )
    if (manifest.lora.rank, manifest.lora.lora_alpha, manifest.lora.use_rslora) != (
        plan.lora.rank,
        plan.lora.lora_alpha,
        plan.lora.use_rslora,
    ):
        raise InvalidInputError(
            f"manifest.lora (r={manifest.lora.rank}, alpha={manifest.lora.lora_alpha}) differs "
            f"from the plan (r={plan.lora.rank}, alpha={plan.lora.lora_alpha}): upload the "
            "factors at the plan's rank and scale"
        )
    if manifest.size > settings.max_upload_bytes:
        raise PayloadTooLargeError(
            f"manifest.size {manifest.size} exceeds the upload limit of "
            f"{settings.max_upload_bytes} bytes"
        )


def begin_upload(
    *,
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    client: Client,
    task_id: uuid.UUID,
    idempotency_key: str,
    manifest: UploadManifest,
) -> UploadSession:
    """Open (or, for a repeated idempotency key, return) the upload session for a task."""
    if not idempotency_key or not IDEMPOTENCY_KEY_RE.fullmatch(idempotency_key):
        raise BadRequestError(
            "send an Idempotency-Key header of 8-128 characters [A-Za-z0-9._:-] "
            "(e.g. a UUID), the same one when you retry"
        )
    client_task(session=session, client=client, task_id=task_id)
    existing = _by_key(session, client.id, idempotency_key)
    if existing is not None:
        return _replay(store, existing, task_id, manifest)
    task = leased_task(session=session, client=client, task_id=task_id)
    _check_manifest(task, manifest, settings)
    upload_id = store.create_partial()
    row = UploadSessionRow(
        id=uuid.UUID(upload_id),
        task_id=task.id,
        client_id=client.id,
        idempotency_key=idempotency_key,
        manifest=manifest.model_dump(mode="json"),
        size=manifest.size,
        offset=0,
        status=UploadStatus.RECEIVING,
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError:  # the same key raced in from a retry: answer with the winner
        session.rollback()
        store.discard_partial(upload_id)
        winner = _by_key(session, client.id, idempotency_key)
        if winner is None:
            raise
        return _replay(store, winner, task_id, manifest)
    return session_view(row, 0)


def _by_key(session: Session, client_id: uuid.UUID, key: str) -> UploadSessionRow | None:
    return session.scalar(
        sa.select(UploadSessionRow).where(
            UploadSessionRow.client_id == client_id, UploadSessionRow.idempotency_key == key
        )
    )


def _replay(
    store: ArtifactStore, row: UploadSessionRow, task_id: uuid.UUID, manifest: UploadManifest
) -> UploadSession:
    if row.task_id != task_id or row.manifest != manifest.model_dump(mode="json"):
        raise ConflictError(
            "this Idempotency-Key was used for a different upload; use a new key for a new upload"
        )
    return session_view(row, current_offset(store, row))


def current_offset(store: ArtifactStore, row: UploadSessionRow) -> int:
    if row.status == UploadStatus.ACCEPTED:
        return row.size
    return store.partial_size(str(row.id))


def client_upload(*, session: Session, client: Client, upload_id: uuid.UUID) -> UploadSessionRow:
    row = session.get(UploadSessionRow, upload_id)
    if row is None or row.client_id != client.id:
        raise NotFoundError.of("upload session", upload_id)
    return row


def expected_shapes(*, session: Session, row: UploadSessionRow) -> dict[str, tuple[int, ...]]:
    task = session.get_one(Task, row.task_id)
    return TrainingPlan.model_validate(task.plan).upload_shapes()


def forget_upload(*, session: Session, upload_id: uuid.UUID) -> None:
    """Delete a rejected session (its bytes are already gone) so nothing of it remains."""
    session.execute(sa.delete(UploadSessionRow).where(UploadSessionRow.id == upload_id))
    session.commit()


def accept_update(
    *,
    session: Session,
    client: Client,
    upload_id: uuid.UUID,
    sha256: str,
    summary: UploadSummary,
) -> tuple[UploadSession, uuid.UUID]:
    """Record a validated, stored update, its ledger entry and the task's new state at once.

    Returns the session view and the round id (for :func:`rounds.maybe_close_round`).
    """
    row = client_upload(session=session, client=client, upload_id=upload_id)
    if row.status == UploadStatus.ACCEPTED:
        task = session.get_one(Task, row.task_id)
        return session_view(row), task.round_id
    manifest = UploadManifest.model_validate(row.manifest)
    task = session.get_one(Task, row.task_id)
    now = utcnow()
    moved = session.execute(
        sa.update(Task)
        .where(
            Task.id == task.id,
            Task.status == TaskStatus.LEASED,
            Task.lease_owner == client.id,
            sa.exists().where(Round.id == Task.round_id, Round.state == RoundState.OPEN),
        )
        .values(status=TaskStatus.UPLOADED, uploaded_at=now, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    if int(moved.rowcount) != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise ConflictError(
            "the update was not accepted: the task's lease was lost or its round closed; "
            "ask for the next task"
        )
    update = Update(
        id=uuid.uuid4(),
        task_id=task.id,
        round_id=task.round_id,
        federation_id=task.federation_id,
        client_id=client.id,
        sha256=sha256,
        size=summary.size,
        shapes={k: list(v) for k, v in summary.shapes.items()},
        lora=manifest.lora.model_dump(mode="json"),
        metrics=dict(manifest.metrics),
        num_examples=manifest.num_examples,
        epsilon=manifest.epsilon_spent,
        accepted_at=now,
    )
    session.add(update)
    session.flush()
    session.add(
        PrivacyLedgerEntry(
            federation_id=task.federation_id,
            client_id=client.id,
            round_id=task.round_id,
            update_id=update.id,
            epsilon=manifest.epsilon_spent,
        )
    )
    session.execute(
        sa.update(Membership)
        .where(Membership.federation_id == task.federation_id, Membership.client_id == client.id)
        .values(num_examples=manifest.num_examples)
        .execution_options(synchronize_session=False)
    )
    row.status = UploadStatus.ACCEPTED
    row.offset = row.size
    row.update_id = update.id
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ConflictError("this task already has an accepted update") from None
    return session_view(row), task.round_id
