"""Views of rounds, tasks, updates, global adapters, the ledger and the audit log; a release."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import PublicModel
from api.services.evaluations import Score, Scoreboard


class EvaluationPublic(BaseModel):
    """A global adapter's federated evaluation: the clients' losses (and accuracies) on their
    own evaluation data, weighted by their example counts. Not covered by DP."""

    loss: float
    accuracy: float | None = Field(description="Classification only.")
    perplexity: float | None = Field(description="Causal LM only: exp(loss).")
    num_examples: int = Field(description="Evaluation examples over all reporting clients.")
    num_clients: int = Field(description="Clients that reported (so far, while it runs).")


def evaluation_public(score: Score | None, board: Scoreboard) -> EvaluationPublic | None:
    if score is None:
        return None
    return EvaluationPublic(
        loss=score.loss,
        accuracy=score.accuracy,
        perplexity=score.perplexity(board.task_type),
        num_examples=score.num_examples,
        num_clients=score.num_clients,
    )


class RoundPublic(PublicModel):
    id: uuid.UUID
    federation_id: uuid.UUID
    number: int
    kind: str = Field(
        default="training",
        description="'training', or 'evaluation': the pass after the last training round in "
        "which members only evaluate the final adapter.",
    )
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
    evaluation: EvaluationPublic | None = Field(
        default=None,
        description="Federated evaluation of the adapter this round published, by the clients "
        "of the next round (or of the evaluation pass after the last one).",
    )
    best: bool = Field(default=False, description="This round published the best adapter.")


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
    dropped_reason: str | None = Field(
        default=None,
        description="Set when the worker left this update out of its round's aggregate "
        "(it failed a check the upload could not show); the client's epsilon stays charged.",
    )


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
    evaluation: EvaluationPublic | None = Field(
        default=None,
        description="Its federated evaluation (None until clients of a later round, or of the "
        "evaluation pass after the last round, have reported).",
    )
    is_best: bool = Field(
        default=False,
        description="The best adapter by federated evaluation: highest accuracy "
        "(classification; ties: lower loss) or lowest loss (causal LM); ties: the later round.",
    )
    is_latest: bool = Field(
        default=False, description="The latest adapter (the final one once the federation ends)."
    )


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


def round_public(row: Any, board: Scoreboard) -> RoundPublic:
    """A round with the federated evaluation of the adapter it published."""
    adapter = board.adapter_of_round.get(row.id)
    return RoundPublic.model_validate(row).model_copy(
        update={
            "evaluation": evaluation_public(board.of_round(row.id), board),
            "best": adapter is not None and adapter == board.best,
        }
    )


def adapter_public(row: Any, board: Scoreboard) -> GlobalAdapterPublic:
    """A global adapter with its federated evaluation and whether it is the best or latest."""
    return GlobalAdapterPublic.model_validate(row).model_copy(
        update={
            "evaluation": evaluation_public(board.of_adapter(row.id), board),
            "is_best": row.id == board.best,
            "is_latest": row.id == board.latest,
        }
    )
