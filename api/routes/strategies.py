"""The aggregation strategies and their parameter schemas (for forms and validation)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import CurrentAdmin

router = APIRouter(prefix="/strategies", tags=["strategies"])


class StrategyPublic(BaseModel):
    name: str
    description: str
    params_schema: dict[str, Any]
    recommended: bool = Field(
        description="The platform's default: the best method of the quality benchmark."
    )


@router.get("")
def list_strategies(admin: CurrentAdmin) -> list[StrategyPublic]:
    """Every registered strategy with a description and the JSON schema of its parameters."""
    from worker.strategies.params import (
        RECOMMENDED_STRATEGY,
        STRATEGY_DESCRIPTIONS,
        STRATEGY_PARAMS,
    )

    return [
        StrategyPublic(
            name=name,
            description=STRATEGY_DESCRIPTIONS[name],
            params_schema=model.model_json_schema(),
            recommended=name == RECOMMENDED_STRATEGY,
        )
        for name, model in STRATEGY_PARAMS.items()
    ]
