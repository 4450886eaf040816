"""Views of rounds, tasks, updates, global adapters, the ledger and the audit log; a release."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import PublicModel


class RoundPublic(PublicModel):
    id: uuid.UUID
    federation_id: uuid.UUID
    number: int
    state: str
    min_updates: int
    opened_at: datetime
    deadline_at: datetime
    aggregating_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    failure_reason: str | None
    job_duration_seconds: float | None
    job_device: str | None
    job_peak_memory_bytes: int | None


class TaskPublic(PublicModel):
    id: uuid.UUID
    round_id: uuid.UUID
    federation_id: uuid.UUID
    client_id: uuid.UUID
    status: str
    plan: dict[str, Any]
    lease_expires_at: datetime | None
    lease_count: int
    leased_at: datetime | None
    uploaded_at: datetime | None
    reported_at: datetime | None
    report_metrics: dict[str, Any]
    released_at: datetime | None = None
    released_by: str | None = Field(
        default=None, description="'client' (it could not train) or 'admin'; None if not released."
    )
    release_reason: str | None = None


class TaskReleaseRequest(BaseModel):
    """An admin's release of a pending or leased task; its round stops waiting for it."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        default="released by an admin",
        min_length=1,
        max_length=1024,
        description="Why; shown with the task.",
    )


class UpdatePublic(PublicModel):
    id: uuid.UUID
    task_id: uuid.UUID
    round_id: uuid.UUID
    client_id: uuid.UUID
    sha256: str
    size: int
    shapes: dict[str, Any]
    lora: dict[str, Any]
    metrics: dict[str, Any]
    num_examples: int
    epsilon: float
    accepted_at: datetime


class GlobalAdapterPublic(PublicModel):
    id: uuid.UUID
    round_id: uuid.UUID
    federation_id: uuid.UUID
    round_number: int
    adapter_sha256: str
    adapter_config_sha256: str
    state_sha256: str | None
    strategy: str
    update_ids: list[str]
    epsilon: float
    metrics: dict[str, Any]
    created_at: datetime


class LedgerEntryPublic(PublicModel):
    id: uuid.UUID
    federation_id: uuid.UUID
    client_id: uuid.UUID
    round_id: uuid.UUID
    update_id: uuid.UUID | None
    epsilon: float
    created_at: datetime


class AuditLogPublic(PublicModel):
    id: uuid.UUID
    admin_id: uuid.UUID | None
    action: str
    object_type: str
    object_id: str | None
    details: dict[str, Any]
    created_at: datetime
