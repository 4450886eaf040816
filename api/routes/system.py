"""Liveness, readiness (database and broker reachable) and worker health (heartbeats).

``/readyz`` answers 200 when the API itself can serve (database and broker reachable) and
reports the workers beside it without failing on them: a dashboard must stay up precisely when
no worker runs, and in docker compose the worker waits for the API to be ready.
``/healthz/workers`` is the check to alert on: 503 while no worker (or no scheduler) reports.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.config import Settings
from api.deps import CurrentAdmin, SessionDep
from api.schemas.workers import WorkersHealthPublic, WorkersHealthSummary
from api.services import workers

router = APIRouter(tags=["system"])
v1 = APIRouter(tags=["system"])
"""Mounted under /api/v1 with the other routers (admin only)."""


def broker_check_for(settings: Settings) -> Callable[[], None]:
    """A callable that raises if the Celery broker cannot be reached within a few seconds."""

    def check() -> None:
        from kombu.connection import Connection

        with Connection(settings.resolved_broker_url, connect_timeout=3) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=1, timeout=3)

    return check


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is unreachable."}})
def readyz(request: Request) -> JSONResponse:
    """Readiness: the database answers a query and the broker accepts a connection."""
    checks: dict[str, str] = {}
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        request.app.state.broker_check()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    body: dict[str, object] = {"status": "ready" if ready else "not ready", "checks": checks}
    if checks["database"] == "ok":
        body["workers"] = _summary(request).model_dump(mode="json")
    return JSONResponse(body, 200 if ready else 503)


def _summary(request: Request) -> WorkersHealthSummary:
    with request.app.state.session_factory() as session:
        health = workers.health(session=session, queue=request.app.state.settings.aggregation_queue)
    return WorkersHealthSummary.of(health)


@router.get(
    "/healthz/workers",
    response_model=WorkersHealthSummary,
    responses={503: {"model": WorkersHealthSummary, "description": "No worker or scheduler."}},
)
def workers_health(request: Request) -> JSONResponse:
    """Whether a worker consumes the aggregation queue and a scheduler runs (503 if not)."""
    summary = _summary(request)
    return JSONResponse(summary.model_dump(mode="json"), 200 if summary.status == "ok" else 503)


@v1.get("/workers")
def list_workers(session: SessionDep, admin: CurrentAdmin, request: Request) -> WorkersHealthPublic:
    """Worker health with the processes seen last: host, pid, queues, last report."""
    queue = request.app.state.settings.aggregation_queue
    return WorkersHealthPublic.of(workers.health(session=session, queue=queue))
