"""Helpers every service uses: paging, loading-or-404, and the admin audit log."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from api.db import Admin, AuditLogEntry
from api.db.base import Base
from api.errors import NotFoundError

M = TypeVar("M", bound=Base)


def page(*, session: Session, stmt: sa.Select[Any], skip: int, limit: int) -> tuple[list[Any], int]:
    """One page of ``stmt``'s rows and the total count."""
    count = session.scalar(sa.select(sa.func.count()).select_from(stmt.order_by(None).subquery()))
    rows = list(session.scalars(stmt.offset(skip).limit(limit)))
    return rows, int(count or 0)


def get_or_404(*, session: Session, model: type[M], object_id: uuid.UUID, kind: str) -> M:
    row = session.get(model, object_id)
    if row is None:
        raise NotFoundError.of(kind, object_id)
    return row


def audit(
    *,
    session: Session,
    admin: Admin | None,
    action: str,
    obj: Any,
    details: dict[str, Any] | None = None,
) -> None:
    """Record an admin action in the current transaction (committed with the change itself)."""
    if getattr(obj, "id", "") is None:  # a new row: give it its key now so the log can name it
        obj.id = uuid.uuid4()
    session.add(
        AuditLogEntry(
            admin_id=admin.id if admin else None,
            action=action,
            object_type=type(obj).__name__,
            object_id=str(getattr(obj, "id", "")) or None,
            details=details or {},
        )
    )
