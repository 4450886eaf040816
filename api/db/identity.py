"""Who is who: organizations, their clients, join tokens, and admin accounts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from api.db.base import Base, CreatedMixin, IdMixin


class Organization(IdMixin, CreatedMixin, Base):
    __tablename__ = "organizations"

    name: Mapped[str] = mapped_column(sa.String(128), unique=True)
    description: Mapped[str] = mapped_column(sa.String(1024), default="")

    clients: Mapped[list[Client]] = relationship(back_populates="organization")


class Client(IdMixin, CreatedMixin, Base):
    """A participating machine of an organization. Its API key is kept only as a sha256."""

    __tablename__ = "clients"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(128))
    api_key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    api_key_prefix: Mapped[str] = mapped_column(sa.String(16))
    key_rotated_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    hardware: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_seen_at: Mapped[datetime | None]

    organization: Mapped[Organization] = relationship(back_populates="clients")

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class JoinToken(IdMixin, CreatedMixin, Base):
    """One-time enrollment secret; only its sha256 is stored."""

    __tablename__ = "join_tokens"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    note: Mapped[str] = mapped_column(sa.String(256), default="")
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    used_by_client_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("clients.id", ondelete="SET NULL")
    )


class Admin(IdMixin, CreatedMixin, Base):
    __tablename__ = "admins"

    email: Mapped[str] = mapped_column(sa.String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(256))
    is_active: Mapped[bool] = mapped_column(default=True)
    token_version: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    """Embedded in each admin token; logout and password change raise it, revoking the rest."""
    password_changed_at: Mapped[datetime | None]


class LoginThrottle(Base):
    """Failed logins counted per account and per client IP, shared by every API process.

    ``key`` is the sha256 of ``account:<email>`` or ``ip:<address>``: what was typed into the
    email field (sometimes a password) is never stored. Rows whose window and lockout have both
    ended are deleted as new failures come in.
    """

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    window_started_at: Mapped[datetime] = mapped_column(index=True)
    locked_until: Mapped[datetime | None]
