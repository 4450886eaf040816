"""Admin login (JWT) and the current admin."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentAdmin, SessionDep, SettingsDep
from api.schemas.identity import AdminPublic, LoginRequest, Token
from api.services import identity

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/login")
def login(body: LoginRequest, session: SessionDep, settings: SettingsDep) -> Token:
    """Exchange an admin's email and password for a bearer token."""
    token = identity.login(
        session=session, settings=settings, email=body.email, password=body.password
    )
    return Token(access_token=token, expires_in=settings.access_token_minutes * 60)


@router.get("/me")
def me(admin: CurrentAdmin) -> AdminPublic:
    """The admin the token belongs to."""
    return AdminPublic.model_validate(admin)
