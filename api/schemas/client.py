"""Client-facing views not in the wire contract (the contract's own models are in protocol)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from api.schemas.common import PublicModel


class ClientSelf(PublicModel):
    id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    hardware: dict[str, Any]
    last_seen_at: datetime | None
    created_at: datetime


class TaskStatusPublic(BaseModel):
    task_id: str
    status: str
