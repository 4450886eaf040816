"""The application shell: health, readiness, metrics, OpenAPI, and no torch in the API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from api.queue import RecordingEnqueuer

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_api_does_not_import_torch() -> None:
    code = (
        "import sys, api.main, api.services.rounds, api.routes; "
        "assert 'torch' not in sys.modules, 'torch was imported'; print('clean')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "clean" in out.stdout


def test_healthz_and_readyz_with_real_database_and_redis(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    r = api.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_readyz_reports_an_unreachable_broker(settings: Settings) -> None:
    bad = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(bad, enqueuer=RecordingEnqueuer())) as api:
        r = api.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["database"] == "ok"
    assert r.json()["checks"]["broker"].startswith("unreachable")


def test_metrics_count_requests_by_route_template(api: TestClient) -> None:
    api.get("/healthz")
    api.get("/api/v1/organizations/00000000-0000-0000-0000-000000000000")
    text = api.get("/metrics").text
    assert 'fedlora_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert 'route="/api/v1/organizations/{organization_id}",status="401"' in text


def test_openapi_is_served_under_the_prefix_with_tag_named_operation_ids(api: TestClient) -> None:
    spec = api.get("/api/v1/openapi.json").json()
    ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    for path in spec["paths"].values():
        for op in path.values():
            assert op["operationId"].startswith(f"{op['tags'][0]}-")


def test_the_dashboard_is_served_at_the_root_with_an_spa_fallback(
    settings: Settings, tmp_path: Path
) -> None:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text('<div id="root"></div>')
    (dist / "assets" / "app.js").write_text("console.log(1)")
    app = create_app(settings, enqueuer=RecordingEnqueuer(), dashboard_dir=dist)
    with TestClient(app) as api:
        assert 'id="root"' in api.get("/").text
        assert 'id="root"' in api.get("/federations/some-id").text  # client-side route
        assert api.get("/assets/app.js").text == "console.log(1)"
        assert api.get("/assets/missing.js").status_code == 404
        missing = api.get("/api/v1/no-such-route")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/json")
        assert api.get("/healthz").json() == {"status": "ok"}
        assert api.get("/api/v1/openapi.json").status_code == 200
