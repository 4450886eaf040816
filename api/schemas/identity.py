"""Admins, organizations, clients and join tokens."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.config import MIN_PASSWORD_LENGTH
from api.schemas.common import NameStr, PublicModel


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(
        min_length=MIN_PASSWORD_LENGTH,
        max_length=1024,
        description=f"At least {MIN_PASSWORD_LENGTH} characters, not a common default.",
    )


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int = Field(description="Seconds until the token expires.")


class AdminPublic(PublicModel):
    id: uuid.UUID
    email: str
    is_active: bool
    created_at: datetime


class OrganizationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: NameStr
    description: str = Field(default="", max_length=1024)


class OrganizationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: NameStr | None = None
    description: str | None = Field(default=None, max_length=1024)


class OrganizationPublic(PublicModel):
    id: uuid.UUID
    name: str
    description: str
    created_at: datetime


class ClientCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organization_id: uuid.UUID
    name: NameStr


class ClientUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: NameStr | None = None


class ClientPublic(PublicModel):
    id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    api_key_prefix: str = Field(description="First characters of the key, to tell keys apart.")
    hardware: dict[str, Any]
    revoked: bool
    revoked_at: datetime | None
    key_rotated_at: datetime | None
    last_seen_at: datetime | None
    created_at: datetime


class ClientWithKey(ClientPublic):
    api_key: str = Field(description="Shown once; only its hash is stored.")


class JoinTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organization_id: uuid.UUID
    expires_in_minutes: int = Field(default=24 * 60, ge=1, le=60 * 24 * 30, strict=True)
    note: str = Field(default="", max_length=256)


class JoinTokenPublic(PublicModel):
    id: uuid.UUID
    organization_id: uuid.UUID
    note: str
    expires_at: datetime
    used_at: datetime | None
    used_by_client_id: uuid.UUID | None
    created_at: datetime


class JoinTokenCreated(JoinTokenPublic):
    token: str = Field(description="Shown once; give it to the client's operator.")
