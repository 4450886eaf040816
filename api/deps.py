"""Annotated dependencies: the DB session, settings, the caller (admin or client), the enqueuer."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.config import Settings
from api.db import Admin, Client, utcnow
from api.errors import AuthenticationError
from api.queue import Enqueuer
from api.security import PasswordGate, decode_access_token, hash_secret, secrets_match

_admin_bearer = HTTPBearer(
    scheme_name="AdminToken", description="JWT from POST /api/v1/auth/login.", auto_error=False
)
_client_bearer = HTTPBearer(
    scheme_name="ClientKey", description="A client's API key (from enrollment).", auto_error=False
)
LAST_SEEN_RESOLUTION = timedelta(seconds=30)


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_enqueuer(request: Request) -> Enqueuer:
    enqueuer: Enqueuer = request.app.state.enqueuer
    return enqueuer


def get_password_gate(request: Request) -> PasswordGate:
    gate: PasswordGate = request.app.state.password_gate
    return gate


def get_client_ip(request: Request) -> str | None:
    """The caller's address (uvicorn puts a trusted proxy's X-Forwarded-For here)."""
    return request.client.host if request.client else None


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
EnqueuerDep = Annotated[Enqueuer, Depends(get_enqueuer)]
PasswordGateDep = Annotated[PasswordGate, Depends(get_password_gate)]
ClientIpDep = Annotated[str | None, Depends(get_client_ip)]


def _admin_for(session: Session, settings: Settings, token: str) -> Admin:
    """The active admin whose token this is, if its version is still the admin's (not revoked
    by a logout or a password change since); otherwise 401."""
    claims = decode_access_token(token, secret_key=settings.secret_key)
    admin = session.get(Admin, claims.admin_id) if claims else None
    if admin is None or not admin.is_active or claims is None:
        raise AuthenticationError("invalid or expired admin token: log in again")
    if admin.token_version != claims.version:
        raise AuthenticationError(
            "admin token revoked (logged out or password changed): log in again"
        )
    session.commit()  # release the connection between the check and the route's own work
    return admin


def get_current_admin(
    session: SessionDep,
    settings: SettingsDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
) -> Admin:
    if creds is None:
        raise AuthenticationError("admin login required: send 'Authorization: Bearer <token>'")
    return _admin_for(session, settings, creds.credentials)


def require_docs_and_metrics_access(
    request: Request,
    settings: SettingsDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
) -> None:
    """Nothing while ``protect_docs_and_metrics`` is off; else an admin token, or for
    ``/metrics`` also ``metrics_token`` (Prometheus cannot log in)."""
    if not settings.docs_and_metrics_protected:
        return
    if creds is None:
        raise AuthenticationError(
            "this endpoint needs 'Authorization: Bearer <admin token>' "
            "(FEDLORA_PROTECT_DOCS_AND_METRICS is on)"
        )
    token = settings.metrics_token
    if (
        token
        and request.url.path == "/metrics"
        and hmac.compare_digest(creds.credentials.encode(), token.encode())
    ):
        return
    with request.app.state.session_factory() as session:
        _admin_for(session, settings, creds.credentials)


def get_current_client(
    session: SessionDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_client_bearer)],
) -> Client:
    if creds is None:
        raise AuthenticationError("client API key required: send 'Authorization: Bearer <key>'")
    digest = hash_secret(creds.credentials)
    client = session.scalar(select(Client).where(Client.api_key_hash == digest))
    if (
        client is None
        or client.revoked_at is not None
        or not secrets_match(creds.credentials, client.api_key_hash)
    ):
        raise AuthenticationError("invalid or revoked API key: enroll again or ask for a new key")
    now = utcnow()
    if client.last_seen_at is None or now - client.last_seen_at > LAST_SEEN_RESOLUTION:
        client.last_seen_at = now
    # End the transaction now: a long-poll must not hold a pooled connection while it waits.
    session.commit()
    return client


CurrentAdmin = Annotated[Admin, Depends(get_current_admin)]
CurrentClient = Annotated[Client, Depends(get_current_client)]


class Page:
    """``skip``/``limit`` query parameters of every list route."""

    def __init__(
        self,
        skip: Annotated[int, Query(ge=0, le=2**31 - 1, description="Rows to skip.")] = 0,
        limit: Annotated[int, Query(ge=1, le=500, description="Rows to return.")] = 100,
    ) -> None:
        self.skip = skip
        self.limit = limit


PageDep = Annotated[Page, Depends()]
