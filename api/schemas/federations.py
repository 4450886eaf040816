"""Federations and memberships. Status and epsilon spent are read-only: never in a body."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from api.schemas.common import NameStr, PublicModel
from fedlora_client.protocol import (
    STRATEGY_NAMES,
    DPSettings,
    LocalTraining,
    ModelSpec,
    TaskType,
    is_safe_tensor_name,
)
from worker.strategies.params import (
    RobustAggregationParams,
    ServerOptimizerParams,
    resolve_robust,
    resolve_server_optimizer,
    resolve_training,
)


def check_strategy(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Validate a strategy name and its parameters; return the normalised parameters."""
    if name not in STRATEGY_NAMES:
        raise ValueError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGY_NAMES)}")
    from worker.strategies.params import validate_params

    try:
        return validate_params(name, params).model_dump(mode="json")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(params)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ValueError(f"strategy_params for {name!r} are invalid: {problems}") from None


class FederationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: NameStr
    description: str = Field(default="", max_length=2048)
    base_model_id: str = Field(min_length=1, max_length=256, description="e.g. a HF model id.")
    task_type: TaskType
    model: ModelSpec = Field(
        description="Fingerprint and adapted modules (`fedlora-client inspect` prints it)."
    )
    target_modules: list[str] = Field(min_length=1, description="PEFT target_modules names.")
    strategy: str = Field(description=f"One of: {', '.join(STRATEGY_NAMES)}.")
    strategy_params: dict[str, Any] = Field(default_factory=dict)
    server_optimizer: ServerOptimizerParams | None = Field(
        default=None,
        description="Server optimizer around the strategy (FedAvgM, FedAdam, FedYogi); empty "
        "takes the platform's default for the strategy.",
    )
    robust_aggregation: RobustAggregationParams = Field(
        default_factory=RobustAggregationParams,
        description="Defences against a hostile member: a cap on one client's share of a "
        "round's weight, a bound on each update's norm, FedAvg's robust rule "
        "(docs/security.md#robust-aggregation). Fields left out take the defaults.",
    )
    # strict: JSON true is not 1, "4" is not 4 (see MembershipCreate)
    global_rank: int = Field(ge=1, le=4096, strict=True, description="Rank of the global adapter.")
    num_rounds: int = Field(ge=1, le=100_000, strict=True)
    clients_per_round: int = Field(ge=1, le=100_000, strict=True)
    min_clients: int = Field(
        ge=1, le=100_000, strict=True, description="Fewest updates a round needs."
    )
    round_deadline_seconds: int = Field(ge=10, le=30 * 24 * 3600, strict=True)
    training: LocalTraining = Field(
        default_factory=LocalTraining,
        description="Local training; fields left out take the platform's defaults for the "
        "strategy (FlexLoRA, SDFLoRA and FLoRA: client AdamW).",
    )
    dp: DPSettings

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy_name(cls, value: object) -> object:
        """Strategy names are case-insensitive ("FlexLoRA" is "flexlora"); stored lower-case."""
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("model")
    @classmethod
    def _classification_head(cls, value: ModelSpec, info: ValidationInfo) -> ModelSpec:
        """A seq_cls federation must share its classification head, or each client keeps its
        own randomly initialised one and the global adapter never classifies."""
        if info.data.get("task_type") is TaskType.SEQ_CLS and not value.extra_trainable:
            raise ValueError(
                "a seq_cls federation needs the classification head in model.extra_trainable, "
                "or the head is never shared: run `fedlora-client inspect <model dir> --task "
                "seq_cls --num-labels <classes> --target <module>` and paste its whole output"
            )
        return value

    @field_validator("target_modules")
    @classmethod
    def _safe_modules(cls, value: list[str]) -> list[str]:
        for name in value:
            if not is_safe_tensor_name(name):
                raise ValueError(f"target module {name!r} is not a dotted identifier")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FederationCreate:
        if self.min_clients > self.clients_per_round:
            raise ValueError(
                f"min_clients ({self.min_clients}) exceeds clients_per_round "
                f"({self.clients_per_round}); lower min_clients or raise clients_per_round"
            )
        self.strategy_params = check_strategy(self.strategy, self.strategy_params)
        self.server_optimizer = resolve_server_optimizer(self.strategy, self.server_optimizer)
        self.training = resolve_training(self.strategy, self.training)
        self.robust_aggregation = resolve_robust(self.strategy, self.robust_aggregation)
        return self


class FederationUpdate(BaseModel):
    """Name, description and the robust-aggregation settings change any time (an admin can
    tighten a defence while a federation runs: the next aggregation uses it); the rest only
    while the federation is a draft."""

    model_config = ConfigDict(extra="forbid")

    name: NameStr | None = None
    description: str | None = Field(default=None, max_length=2048)
    robust_aggregation: RobustAggregationParams | None = Field(
        default=None, description="Replaces the settings whole (fields left out: defaults)."
    )
    strategy_params: dict[str, Any] | None = None
    server_optimizer: ServerOptimizerParams | None = None
    global_rank: int | None = Field(default=None, ge=1, le=4096, strict=True)
    num_rounds: int | None = Field(default=None, ge=1, le=100_000)
    clients_per_round: int | None = Field(default=None, ge=1, le=100_000)
    min_clients: int | None = Field(default=None, ge=1, le=100_000)
    round_deadline_seconds: int | None = Field(default=None, ge=10, le=30 * 24 * 3600)
    training: LocalTraining | None = None
    dp: DPSettings | None = None


class FederationPublic(PublicModel):
    id: uuid.UUID
    name: str
    description: str
    base_model_id: str
    task_type: TaskType
    model: ModelSpec = Field(validation_alias="model_spec")
    target_modules: list[str]
    strategy: str
    strategy_params: dict[str, Any]
    server_optimizer: ServerOptimizerParams
    robust_aggregation: RobustAggregationParams = Field(default_factory=RobustAggregationParams)
    global_rank: int
    num_rounds: int
    clients_per_round: int
    min_clients: int
    round_deadline_seconds: int
    training: LocalTraining = Field(validation_alias="local_training")
    dp: DPSettings
    status: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    rounds_completed: int = Field(
        default=0, description="Training rounds completed (of num_rounds)."
    )
    rounds_failed: int = Field(
        default=0,
        description="Training rounds that failed and were replaced by a new one; they do not "
        "count towards num_rounds.",
    )


_MAX_EXAMPLES = (
    "The most examples this member's updates count for as aggregation weight: a claimed "
    "num_examples above it is taken as this (the claim is the client's own word; the admin "
    "knows the organization). Null: no maximum (1e9, the upload limit)."
)


class MembershipCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_id: uuid.UUID
    # strict: lax pydantic reads JSON `true` as 1 and "8" as 8; a rank is a JSON integer
    rank_budget: int = Field(
        ge=1, le=4096, strict=True, description="Highest LoRA rank this client trains."
    )
    max_examples: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        strict=True,
        description=_MAX_EXAMPLES,
    )


class MembershipUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank_budget: int | None = Field(default=None, ge=1, le=4096, strict=True)
    active: bool | None = None
    max_examples: int | None = Field(
        default=None, ge=1, le=1_000_000_000, strict=True, description=_MAX_EXAMPLES
    )


class MembershipPublic(PublicModel):
    id: uuid.UUID
    federation_id: uuid.UUID
    client_id: uuid.UUID
    rank_budget: int
    active: bool
    fingerprint: str | None
    fingerprint_reported_at: datetime | None
    num_examples: int | None
    max_examples: int | None = None
    epsilon_spent: float = 0.0
    trained_rank: int = Field(
        default=0,
        description="The rank this member trains: its rank_budget, capped at the global rank "
        "by every strategy but FLoRA (which trains the whole budget).",
    )
    warning: str | None = Field(
        default=None, description="Set when trained_rank is below rank_budget: why, and the fix."
    )
    created_at: datetime
