"""Liveness, readiness (database and broker reachable)."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.config import Settings

router = APIRouter(tags=["system"])


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
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
    )
