"""Serve the built admin dashboard (a single-page app) at ``/``, next to the API.

The dashboard is found in ``api/static`` (a packaged build) or ``frontend/dist`` (a build in
the source tree); without either the API runs alone. Unknown paths outside the API get
``index.html`` so the SPA's client-side routes survive a reload; ``/api/...`` never does, so an
API client asking for a missing route still gets a JSON 404.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = (ROOT / "api" / "static", ROOT / "frontend" / "dist")
API_PATHS = ("api/", "healthz", "readyz", "metrics")


class SPAStaticFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            return await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404 or path.startswith(API_PATHS) or "." in Path(path).name:
                raise
            return await super().get_response("index.html", scope)


def find_dashboard() -> Path | None:
    return next((d for d in CANDIDATES if (d / "index.html").is_file()), None)


def mount_dashboard(app: FastAPI, directory: Path | None) -> None:
    """Mount ``directory`` at ``/`` (after every route, so routes always win)."""
    if directory is not None and (directory / "index.html").is_file():
        app.mount("/", SPAStaticFiles(directory=directory, html=True), name="dashboard")
