"""Aggregation strategies, one module per method, behind the protocol in ``base.py``.

This package's ``__init__`` imports no torch: the registry loads a strategy module with
:mod:`importlib` only when :func:`get_strategy` is called, so the API and the CLI can list
strategies (:func:`list_strategies`) and validate their parameters (``params.py``) cheaply.

Usage (worker side)::

    strategy = get_strategy(federation.strategy, federation.strategy_params)
    state = strategy.init_state(ctx)
    assignments = strategy.plan(state, ctx)
    result = strategy.aggregate(state, ctx, updates)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fedlora_client.protocol import STRATEGY_NAMES
from worker.strategies.params import (
    RECOMMENDED_STRATEGY,
    STRATEGY_DESCRIPTIONS,
    STRATEGY_PARAMS,
    validate_params,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

    from worker.strategies.base import Strategy

__all__ = [
    "RECOMMENDED_STRATEGY",
    "STRATEGY_DESCRIPTIONS",
    "STRATEGY_PARAMS",
    "get_strategy",
    "list_strategies",
]

_REGISTRY: dict[str, tuple[str, str]] = {
    "fedavg": ("worker.strategies.fedavg", "FedAvg"),
    "hetlora": ("worker.strategies.hetlora", "HetLoRA"),
    "flora": ("worker.strategies.flora", "FLoRA"),
    "flexlora": ("worker.strategies.flexlora", "FlexLoRA"),
    "fslora": ("worker.strategies.fslora", "FSLoRA"),
    "sdflora": ("worker.strategies.sdflora", "SDFLoRA"),
    "prelort": ("worker.strategies.prelort", "PreLort"),
}


def list_strategies() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every registered strategy, in protocol order."""
    return [(name, STRATEGY_DESCRIPTIONS[name]) for name in STRATEGY_NAMES]


def get_strategy(
    name: str,
    params: BaseModel | dict[str, object] | None = None,
    *,
    device: str = "auto",
    server_optimizer: BaseModel | dict[str, object] | None = None,
    robust: BaseModel | dict[str, object] | None = None,
) -> Strategy:
    """Instantiate strategy ``name`` with validated ``params`` on ``device`` (imports torch).

    ``device`` is the worker setting ``auto`` | ``cpu`` | ``cuda``; ``auto`` uses CUDA when present.
    ``server_optimizer`` (a federation's stored settings) wraps the strategy in
    :class:`worker.strategies.server_opt.ServerOptimized` unless it is absent or ``none``.
    ``robust`` (a federation's stored robust-aggregation settings; ``{}`` takes the defaults)
    wraps the result in :class:`worker.strategies.robust.RobustAggregation` (bounded weights
    and update norms); ``None`` leaves the strategy bare (benchmarks, unit tests).
    Raises ``KeyError`` for an unknown name and ``pydantic.ValidationError`` for bad params.
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown strategy {name!r}; known: {', '.join(STRATEGY_NAMES)}")
    if params is None or isinstance(params, dict):
        params = validate_params(name, params)
    module_name, class_name = _REGISTRY[name]
    cls = getattr(importlib.import_module(module_name), class_name)
    strategy: Strategy = cls(params, device=device)
    if server_optimizer:
        from worker.strategies.server_opt import with_server_optimizer

        strategy = with_server_optimizer(strategy, server_optimizer)  # type: ignore[arg-type]
    if robust is not None:
        from worker.strategies.robust import with_robust_aggregation

        strategy = with_robust_aggregation(strategy, robust)  # type: ignore[arg-type]
    return strategy
