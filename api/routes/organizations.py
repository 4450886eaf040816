"""Admin: organizations."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from fastapi import APIRouter, status

from api.db import Organization
from api.deps import CurrentAdmin, PageDep, SessionDep
from api.schemas.common import ListPublic
from api.schemas.identity import OrganizationCreate, OrganizationPublic, OrganizationUpdate
from api.services import identity
from api.services.common import get_or_404, page

router = APIRouter(prefix="/organizations", tags=["organizations"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_organization(
    body: OrganizationCreate, session: SessionDep, admin: CurrentAdmin
) -> OrganizationPublic:
    org = identity.create_organization(session=session, admin=admin, body=body)
    return OrganizationPublic.model_validate(org)


@router.get("")
def list_organizations(
    session: SessionDep, admin: CurrentAdmin, p: PageDep
) -> ListPublic[OrganizationPublic]:
    stmt = sa.select(Organization).order_by(Organization.created_at, Organization.id)
    rows, count = page(session=session, stmt=stmt, skip=p.skip, limit=p.limit)
    return ListPublic(data=[OrganizationPublic.model_validate(r) for r in rows], count=count)


@router.get("/{organization_id}")
def get_organization(
    organization_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin
) -> OrganizationPublic:
    org = get_or_404(
        session=session, model=Organization, object_id=organization_id, kind="organization"
    )
    return OrganizationPublic.model_validate(org)


@router.patch("/{organization_id}")
def update_organization(
    organization_id: uuid.UUID, body: OrganizationUpdate, session: SessionDep, admin: CurrentAdmin
) -> OrganizationPublic:
    org = identity.update_organization(
        session=session, admin=admin, org_id=organization_id, body=body
    )
    return OrganizationPublic.model_validate(org)


@router.delete("/{organization_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_organization(
    organization_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin
) -> None:
    identity.delete_organization(session=session, admin=admin, org_id=organization_id)
