"""Prometheus metrics (one registry per app, so several apps in one process do not clash)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Depends, FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from api.deps import require_docs_and_metrics_access


def _route_template(request: Request) -> str:
    """The route's path template (bounded label values), not the raw URL with its ids."""
    if request.scope.get("route") is None:
        return "<unmatched>"
    path = request.url.path
    for name, value in request.scope.get("path_params", {}).items():
        path = path.replace(f"/{value}", f"/{{{name}}}", 1)
    return path


def install_metrics(app: FastAPI) -> None:
    registry = CollectorRegistry()
    requests = Counter(
        "fedlora_http_requests_total",
        "HTTP requests by method, route and status.",
        ["method", "route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "fedlora_http_request_seconds",
        "HTTP request latency by method and route.",
        ["method", "route"],
        registry=registry,
    )
    app.state.metrics_registry = registry

    @app.middleware("http")
    async def _measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = _route_template(request)
        latency.labels(request.method, route).observe(time.perf_counter() - start)
        requests.labels(request.method, route, str(response.status_code)).inc()
        return response

    @app.get(
        "/metrics",
        tags=["system"],
        include_in_schema=False,
        dependencies=[Depends(require_docs_and_metrics_access)],
    )
    def metrics() -> Response:
        """Prometheus text; behind an admin token or ``metrics_token`` when protected."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
