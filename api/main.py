"""The FastAPI application factory: ``create_app(settings) -> FastAPI``.

Routers live under ``/api/v1`` (OpenAPI at ``/api/v1/openapi.json``, operation ids
``{tag}-{name}``); ``/healthz``, ``/readyz`` and ``/metrics`` sit at the root. The app holds its
engine, session factory, artifact store and job enqueuer on ``app.state`` so tests can swap any.
With ``protect_docs_and_metrics`` (the production default) the OpenAPI document and
``/metrics`` need an admin token and the interactive docs page is not served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute

from api.config import Settings, get_settings
from api.dashboard import find_dashboard, mount_dashboard
from api.db import engine_from_settings, make_session_factory
from api.deps import require_docs_and_metrics_access
from api.errors import install_error_handlers
from api.http_headers import SecurityHeadersMiddleware
from api.observability import install_metrics
from api.queue import CeleryEnqueuer, Enqueuer
from api.routes import ROUTERS, system
from api.schemas.common import ErrorPublic
from api.security import PasswordGate
from api.services.identity import ensure_bootstrap_admin
from api.storage import ArtifactStore
from api.strict_json import StrictJSONMiddleware
from fedlora_client.protocol import API_PREFIX

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorPublic, "description": text}
    for status, text in (
        (401, "Missing or invalid credentials."),
        (404, "Unknown, or not visible to the caller."),
        (409, "The object's state forbids this action."),
    )
}


def operation_id(route: APIRoute) -> str:
    tag = str(route.tags[0]) if route.tags else "default"
    return f"{tag}-{route.name}"


def create_app(
    settings: Settings | None = None,
    *,
    enqueuer: Enqueuer | None = None,
    broker_check: Callable[[], None] | None = None,
    dashboard_dir: Path | None = None,
) -> FastAPI:
    """The app for ``settings``; ``dashboard_dir`` overrides where the built dashboard is."""
    settings = settings or get_settings()
    engine = engine_from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with app.state.session_factory() as session:
            ensure_bootstrap_admin(session=session, settings=settings)
        yield
        engine.dispose()

    protected = settings.docs_and_metrics_protected
    app = FastAPI(
        title="fedlora control plane",
        version="1",
        description="Federated LoRA fine-tuning: federations, clients, rounds, tasks, adapters.",
        openapi_url=None if protected else f"{API_PREFIX}/openapi.json",
        docs_url=None if protected else f"{API_PREFIX}/docs",
        redoc_url=None,
        generate_unique_id_function=operation_id,
        lifespan=lifespan,
    )
    if protected:

        @app.get(
            f"{API_PREFIX}/openapi.json",
            include_in_schema=False,
            dependencies=[Depends(require_docs_and_metrics_access)],
        )
        def openapi_document() -> dict[str, Any]:
            return app.openapi()

    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.enqueuer = enqueuer or CeleryEnqueuer(settings)
    app.state.broker_check = broker_check or system.broker_check_for(settings)
    app.state.store = ArtifactStore(settings.resolved_artifact_dir)
    app.state.password_gate = PasswordGate(
        settings.password_hash_concurrency, settings.password_hash_wait_seconds
    )
    # inside CORS (added later, so outer): its refusals carry the CORS headers too
    app.add_middleware(StrictJSONMiddleware, limit=settings.max_json_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: every response carries them
    install_error_handlers(app)
    install_metrics(app)
    app.include_router(system.router)
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX, responses=ERROR_RESPONSES)
    mount_dashboard(app, dashboard_dir or find_dashboard())
    return app
