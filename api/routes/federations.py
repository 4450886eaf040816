"""Admin: federations, their lifecycle (start/pause/resume/cancel) and memberships."""

from __future__ import annotations

import uuid
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Query, status
from sqlalchemy.orm import Session

from api.db import Federation, Membership, RoundState
from api.deps import CurrentAdmin, EnqueuerDep, PageDep, SessionDep
from api.schemas.common import ListPublic
from api.schemas.dp_preview import MAX_DATASET_SIZES, DatasetSize, DPPreviewPublic, DPPreviewRequest
from api.schemas.federations import (
    FederationCreate,
    FederationPublic,
    FederationUpdate,
    MembershipCreate,
    MembershipPublic,
    MembershipUpdate,
)
from api.services import dp_preview
from api.services import federations as svc
from api.services.common import page

router = APIRouter(prefix="/federations", tags=["federations"])
members = APIRouter(prefix="/federations/{federation_id}/memberships", tags=["memberships"])


def _public(
    fed: Federation, *, session: Session, counts: dict[str, int] | None = None
) -> FederationPublic:
    """The federation with its training rounds' counts (``counts``, else read now)."""
    if counts is None:
        counts = svc.round_counts(session=session, federation_ids=[fed.id])[fed.id]
    return FederationPublic.model_validate(fed).model_copy(
        update={
            "rounds_completed": counts.get(RoundState.COMPLETED, 0),
            "rounds_failed": counts.get(RoundState.FAILED, 0),
        }
    )


@router.post("", status_code=status.HTTP_201_CREATED)
def create_federation(
    body: FederationCreate, session: SessionDep, admin: CurrentAdmin
) -> FederationPublic:
    """Create a draft federation; the strategy and its parameters are validated here."""
    fed = svc.create_federation(session=session, admin=admin, body=body)
    return _public(fed, session=session)


@router.post("/dp-preview")
def preview_dp(body: DPPreviewRequest, admin: CurrentAdmin) -> DPPreviewPublic:
    """What a draft's DP settings do before it starts: for organizations of a few sizes, the
    logical batch, steps, sigma, epsilon after all rounds and the expected noise-to-signal
    ratio, with warnings (client-level DP with few organizations, noise above the signal)."""
    return dp_preview.preview_draft(body=body)


@router.get("")
def list_federations(
    session: SessionDep,
    admin: CurrentAdmin,
    p: PageDep,
    status_filter: Annotated[
        str | None, Query(alias="status", description="Only federations in this status.")
    ] = None,
) -> ListPublic[FederationPublic]:
    stmt = sa.select(Federation).order_by(Federation.created_at, Federation.id)
    if status_filter is not None:
        stmt = stmt.where(Federation.status == status_filter)
    rows, count = page(session=session, stmt=stmt, skip=p.skip, limit=p.limit)
    counts = svc.round_counts(session=session, federation_ids=[r.id for r in rows])
    return ListPublic(
        data=[_public(r, session=session, counts=counts[r.id]) for r in rows], count=count
    )


@router.get("/{federation_id}")
def get_federation(
    federation_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin
) -> FederationPublic:
    fed = svc.get_federation(session=session, federation_id=federation_id)
    return _public(fed, session=session)


@router.get("/{federation_id}/dp-preview")
def federation_dp_preview(
    federation_id: uuid.UUID,
    session: SessionDep,
    admin: CurrentAdmin,
    dataset_sizes: Annotated[
        list[DatasetSize] | None,
        Query(
            max_length=MAX_DATASET_SIZES,
            description="Organization sizes to preview (repeat); default: the members' "
            "reported num_examples, else 500, 5,000 and 50,000.",
        ),
    ] = None,
) -> DPPreviewPublic:
    """The DP preview of this federation's settings, for its members' dataset sizes."""
    return dp_preview.preview_federation(
        session=session, federation_id=federation_id, dataset_sizes=dataset_sizes
    )


@router.patch("/{federation_id}")
def update_federation(
    federation_id: uuid.UUID, body: FederationUpdate, session: SessionDep, admin: CurrentAdmin
) -> FederationPublic:
    """Rename any time; other settings change only while the federation is a draft."""
    fed = svc.update_federation(
        session=session, admin=admin, federation_id=federation_id, body=body
    )
    return _public(fed, session=session)


@router.delete("/{federation_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_federation(federation_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin) -> None:
    svc.delete_federation(session=session, admin=admin, federation_id=federation_id)


@router.post("/{federation_id}/start")
def start_federation(
    federation_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin, enqueue: EnqueuerDep
) -> FederationPublic:
    """draft -> running; the worker opens round 1 (enqueued after the commit)."""
    fed = svc.start_federation(
        session=session, admin=admin, federation_id=federation_id, enqueue=enqueue
    )
    return _public(fed, session=session)


@router.post("/{federation_id}/pause")
def pause_federation(
    federation_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin
) -> FederationPublic:
    """running -> paused: no task is handed out and no new round opens until resume."""
    fed = svc.pause_federation(session=session, admin=admin, federation_id=federation_id)
    return _public(fed, session=session)


@router.post("/{federation_id}/resume")
def resume_federation(
    federation_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin, enqueue: EnqueuerDep
) -> FederationPublic:
    fed = svc.resume_federation(
        session=session, admin=admin, federation_id=federation_id, enqueue=enqueue
    )
    return _public(fed, session=session)


@router.post("/{federation_id}/cancel")
def cancel_federation(
    federation_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin
) -> FederationPublic:
    """Stop for good: the open round fails and its tasks are dropped."""
    fed = svc.cancel_federation(session=session, admin=admin, federation_id=federation_id)
    return _public(fed, session=session)


def _membership_public(
    row: Membership, spent: dict[uuid.UUID, float], session: SessionDep
) -> MembershipPublic:
    public = MembershipPublic.model_validate(row)
    public.epsilon_spent = spent.get(row.client_id, 0.0)
    fed = svc.get_federation(session=session, federation_id=row.federation_id)
    public.trained_rank, public.warning = svc.trained_rank(fed, row.rank_budget)
    return public


@members.post("", status_code=status.HTTP_201_CREATED)
def add_membership(
    federation_id: uuid.UUID, body: MembershipCreate, session: SessionDep, admin: CurrentAdmin
) -> MembershipPublic:
    row = svc.add_membership(session=session, admin=admin, federation_id=federation_id, body=body)
    return _membership_public(row, {}, session)


@members.get("")
def list_memberships(
    federation_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin, p: PageDep
) -> ListPublic[MembershipPublic]:
    svc.get_federation(session=session, federation_id=federation_id)
    stmt = (
        sa.select(Membership)
        .where(Membership.federation_id == federation_id)
        .order_by(Membership.created_at, Membership.id)
    )
    rows, count = page(session=session, stmt=stmt, skip=p.skip, limit=p.limit)
    spent = svc.epsilon_spent(session=session, federation_id=federation_id)
    return ListPublic(data=[_membership_public(r, spent, session) for r in rows], count=count)


@members.patch("/{membership_id}")
def update_membership(
    federation_id: uuid.UUID,
    membership_id: uuid.UUID,
    body: MembershipUpdate,
    session: SessionDep,
    admin: CurrentAdmin,
) -> MembershipPublic:
    row = svc.update_membership(
        session=session,
        admin=admin,
        federation_id=federation_id,
        membership_id=membership_id,
        body=body,
    )
    spent = svc.epsilon_spent(session=session, federation_id=federation_id)
    return _membership_public(row, spent, session)


@members.delete("/{membership_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_membership(
    federation_id: uuid.UUID, membership_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin
) -> None:
    svc.delete_membership(
        session=session, admin=admin, federation_id=federation_id, membership_id=membership_id
    )
