"""HTTP hardening: no-store on credentials, security headers, protected /metrics and docs,
strict integers, and an OpenAPI that says what the upload route requires."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from api.queue import RecordingEnqueuer
from tests.api.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.api.factories import federation_body
from tests.api.world import make_org

V1 = "/api/v1"
METRICS_TOKEN = "prometheus-scrape-token-0123456789abcdef"


def _security_headers(r: httpx.Response) -> None:
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]


def _no_store(r: httpx.Response) -> None:
    assert r.headers["Cache-Control"] == "no-store", (r.request.url, r.headers)
    assert r.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
    _security_headers(r)


def test_responses_with_tokens_and_keys_are_never_cached(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    login = api.post(f"{V1}/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    _no_store(login)
    org = make_org(api, admin_headers, "org-h")
    join = api.post(f"{V1}/join-tokens", json={"organization_id": org}, headers=admin_headers)
    assert join.status_code == 201
    _no_store(join)
    enroll = api.post(f"{V1}/enroll", json={"join_token": join.json()["token"], "name": "c1"})
    assert enroll.status_code == 201
    _no_store(enroll)
    created = api.post(
        f"{V1}/clients", json={"organization_id": org, "name": "c2"}, headers=admin_headers
    )
    assert "api_key" in created.json()
    _no_store(created)
    rotated = api.post(f"{V1}/clients/{created.json()['id']}/rotate-key", headers=admin_headers)
    assert "api_key" in rotated.json(), rotated.text
    _no_store(rotated)
    # errors and refusals before any route too
    _no_store(api.get(f"{V1}/auth/me"))
    _no_store(api.post(f"{V1}/auth/login", content=b"{" * 10, headers={"content-type": "x"}))
    _no_store(api.get("/metrics"))


def test_every_response_gets_the_security_headers(settings: Settings, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text('<div id="root"></div>')
    app = create_app(settings, enqueuer=RecordingEnqueuer(), dashboard_dir=dist)
    with TestClient(app) as api:
        page = api.get("/")
        _security_headers(page)
        assert "Cache-Control" not in page.headers  # the dashboard's files may be cached
        assert page.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
        _security_headers(api.get("/healthz"))
        docs = api.get(f"{V1}/docs")  # Swagger UI loads its scripts: only the framing rule
        assert docs.status_code == 200
        assert docs.headers["Content-Security-Policy"] == "frame-ancestors 'none'"


@pytest.fixture
def protected(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"protect_docs_and_metrics": True, "metrics_token": METRICS_TOKEN}
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_metrics_and_docs_need_an_admin_when_protected(protected: Settings) -> None:
    with TestClient(create_app(protected, enqueuer=RecordingEnqueuer())) as api:
        r = api.post(f"{V1}/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        admin = {"Authorization": f"Bearer {r.json()['access_token']}"}
        scraper = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        for path in ("/metrics", f"{V1}/openapi.json"):
            r = api.get(path)
            assert r.status_code == 401, path
            assert "FEDLORA_PROTECT_DOCS_AND_METRICS" in r.json()["detail"]
            assert api.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
            assert api.get(path, headers=admin).status_code == 200, path
        assert "fedlora_http_requests_total" in api.get("/metrics", headers=scraper).text
        # the scrape token opens /metrics only
        assert api.get(f"{V1}/openapi.json", headers=scraper).status_code == 401
        assert api.get(f"{V1}/docs").status_code == 404
        assert api.get(f"{V1}/openapi.json", headers=admin).json()["paths"]
        assert api.post(f"{V1}/auth/logout", headers=admin).status_code == 204
        assert api.get("/metrics", headers=admin).status_code == 401  # revoked
        assert api.get("/healthz").status_code == 200  # probes stay open


def test_production_protects_docs_and_metrics_by_default() -> None:
    base = {
        "environment": "production",
        "secret_key": "Yq3v0cX8-kP2m9Rt_wL5nB7zH1sD4fG6jA0eU3iO8yT2",
        "database_url": "postgresql+psycopg://u:p@db/fedlora",
        "broker_url": "redis://redis:6379/0",
    }
    assert Settings(**base).docs_and_metrics_protected
    assert not Settings(**base, protect_docs_and_metrics=False).docs_and_metrics_protected
    assert not Settings().docs_and_metrics_protected  # development stays open


def test_integers_in_admin_bodies_are_strict(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    org = make_org(api, admin_headers, "org-s")
    client = api.post(
        f"{V1}/clients", json={"organization_id": org, "name": "c"}, headers=admin_headers
    ).json()
    fed = api.post(f"{V1}/federations", json=federation_body(), headers=admin_headers).json()
    url = f"{V1}/federations/{fed['id']}/memberships"
    for bad in (True, "4", 4.0):
        r = api.post(
            url, json={"client_id": client["id"], "rank_budget": bad}, headers=admin_headers
        )
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "rank_budget"]
        r = api.post(
            f"{V1}/federations", json=federation_body(global_rank=bad), headers=admin_headers
        )
        assert r.status_code == 422, (bad, r.text)
        r = api.post(
            f"{V1}/join-tokens",
            json={"organization_id": org, "expires_in_minutes": bad},
            headers=admin_headers,
        )
        assert r.status_code == 422, (bad, r.text)
    r = api.post(url, json={"client_id": client["id"], "rank_budget": 4}, headers=admin_headers)
    assert r.status_code == 201, r.text
    r = api.patch(f"{url}/{r.json()['id']}", json={"rank_budget": True}, headers=admin_headers)
    assert r.status_code == 422


def test_openapi_says_the_idempotency_key_is_required(api: TestClient) -> None:
    spec = api.get(f"{V1}/openapi.json").json()
    op = spec["paths"][f"{V1}/client/tasks/{{task_id}}/uploads"]["post"]
    (param,) = [p for p in op["parameters"] if p["name"] == "Idempotency-Key"]
    assert param["in"] == "header"
    assert param["required"] is True
    assert "same key" in param["description"]
