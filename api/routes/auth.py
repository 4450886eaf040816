"""Admin login (JWT), logout, password change and the current admin."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from api.deps import ClientIpDep, CurrentAdmin, PasswordGateDep, SessionDep, SettingsDep
from api.schemas.common import ErrorPublic
from api.schemas.identity import AdminPublic, LoginRequest, PasswordChange, Token
from api.services import identity

router = APIRouter(prefix="/auth", tags=["auth"])

THROTTLED: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorPublic,
        "description": "Too many failed logins for the account or the caller's address; "
        "the Retry-After header gives the seconds to wait.",
    },
    503: {
        "model": ErrorPublic,
        "description": "Every password-hashing slot is busy; retry after Retry-After seconds.",
    },
}


@router.post("/login", responses=THROTTLED)
def login(
    body: LoginRequest,
    session: SessionDep,
    settings: SettingsDep,
    gate: PasswordGateDep,
    client_ip: ClientIpDep,
) -> Token:
    """Exchange an admin's email and password for a bearer token.

    Repeated failures lock the account, and separately the caller's address, out for a while
    (429 with Retry-After), even for the right password.
    """
    token = identity.login(
        session=session,
        settings=settings,
        gate=gate,
        email=body.email,
        password=body.password,
        client_ip=client_ip,
    )
    return Token(access_token=token, expires_in=settings.access_token_minutes * 60)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(admin: CurrentAdmin, session: SessionDep) -> None:
    """Revoke every token of this admin: this one and those of its other sessions."""
    identity.logout(session=session, admin=admin)


@router.post(
    "/password",
    responses={
        **THROTTLED,
        403: {"model": ErrorPublic, "description": "current_password is wrong."},
    },
)
def change_password(
    body: PasswordChange,
    admin: CurrentAdmin,
    session: SessionDep,
    settings: SettingsDep,
    gate: PasswordGateDep,
    client_ip: ClientIpDep,
) -> Token:
    """Change this admin's password; every earlier token is revoked and a new one returned."""
    token = identity.change_password(
        session=session,
        settings=settings,
        gate=gate,
        admin=admin,
        current_password=body.current_password,
        new_password=body.new_password,
        client_ip=client_ip,
    )
    return Token(access_token=token, expires_in=settings.access_token_minutes * 60)


@router.get("/me")
def me(admin: CurrentAdmin) -> AdminPublic:
    """The admin the token belongs to."""
    return AdminPublic.model_validate(admin)
