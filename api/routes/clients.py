"""Admin: clients (keys are shown once, on create and rotate) and join tokens."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from fastapi import APIRouter, status

from api.db import Client, JoinToken
from api.deps import CurrentAdmin, PageDep, SessionDep
from api.schemas.common import ListPublic
from api.schemas.identity import (
    ClientCreate,
    ClientPublic,
    ClientUpdate,
    ClientWithKey,
    JoinTokenCreate,
    JoinTokenCreated,
    JoinTokenPublic,
)
from api.services import identity
from api.services.common import get_or_404, page

router = APIRouter(prefix="/clients", tags=["clients"])
tokens = APIRouter(prefix="/join-tokens", tags=["join-tokens"])


def _with_key(client: Client, key: str) -> ClientWithKey:
    return ClientWithKey.model_validate(
        {**ClientPublic.model_validate(client).model_dump(), "api_key": key}
    )


@router.post("", status_code=status.HTTP_201_CREATED)
def create_client(body: ClientCreate, session: SessionDep, admin: CurrentAdmin) -> ClientWithKey:
    """Create a client directly (instead of enrollment); its API key is shown only here."""
    client, key = identity.create_client(session=session, admin=admin, body=body)
    return _with_key(client, key)


@router.get("")
def list_clients(
    session: SessionDep,
    admin: CurrentAdmin,
    p: PageDep,
    organization_id: uuid.UUID | None = None,
) -> ListPublic[ClientPublic]:
    stmt = sa.select(Client).order_by(Client.created_at, Client.id)
    if organization_id is not None:
        stmt = stmt.where(Client.organization_id == organization_id)
    rows, count = page(session=session, stmt=stmt, skip=p.skip, limit=p.limit)
    return ListPublic(data=[ClientPublic.model_validate(r) for r in rows], count=count)


@router.get("/{client_id}")
def get_client(client_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin) -> ClientPublic:
    client = get_or_404(session=session, model=Client, object_id=client_id, kind="client")
    return ClientPublic.model_validate(client)


@router.patch("/{client_id}")
def update_client(
    client_id: uuid.UUID, body: ClientUpdate, session: SessionDep, admin: CurrentAdmin
) -> ClientPublic:
    client = identity.update_client(session=session, admin=admin, client_id=client_id, body=body)
    return ClientPublic.model_validate(client)


@router.post("/{client_id}/revoke")
def revoke_client(client_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin) -> ClientPublic:
    """Revoke the client's key at once; rotate the key to let it back in."""
    client = identity.revoke_client(session=session, admin=admin, client_id=client_id)
    return ClientPublic.model_validate(client)


@router.post("/{client_id}/rotate-key")
def rotate_client_key(
    client_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin
) -> ClientWithKey:
    """Replace the client's key; the new key is shown only in this response."""
    client, key = identity.rotate_client_key(session=session, admin=admin, client_id=client_id)
    return _with_key(client, key)


@router.delete("/{client_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_client(client_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin) -> None:
    identity.delete_client(session=session, admin=admin, client_id=client_id)


@tokens.post("", status_code=status.HTTP_201_CREATED)
def create_join_token(
    body: JoinTokenCreate, session: SessionDep, admin: CurrentAdmin
) -> JoinTokenCreated:
    """A one-time token a client exchanges for its API key; shown only in this response."""
    row, token = identity.create_join_token(session=session, admin=admin, body=body)
    return JoinTokenCreated.model_validate(
        {**JoinTokenPublic.model_validate(row).model_dump(), "token": token}
    )


@tokens.get("")
def list_join_tokens(
    session: SessionDep,
    admin: CurrentAdmin,
    p: PageDep,
    organization_id: uuid.UUID | None = None,
) -> ListPublic[JoinTokenPublic]:
    stmt = sa.select(JoinToken).order_by(JoinToken.created_at, JoinToken.id)
    if organization_id is not None:
        stmt = stmt.where(JoinToken.organization_id == organization_id)
    rows, count = page(session=session, stmt=stmt, skip=p.skip, limit=p.limit)
    return ListPublic(data=[JoinTokenPublic.model_validate(r) for r in rows], count=count)


@tokens.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_join_token(token_id: uuid.UUID, session: SessionDep, admin: CurrentAdmin) -> None:
    identity.delete_join_token(session=session, admin=admin, token_id=token_id)
