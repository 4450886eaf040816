"""Login throttling: lockout per account and per IP (429 + Retry-After), kept in the database so
every API process shares it, and a bound on concurrent password hashing (503 when full)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.config import Settings
from api.db import LoginThrottle, utcnow
from api.main import create_app
from api.queue import RecordingEnqueuer
from api.security import PasswordGate
from api.services import identity
from tests.api.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

LOGIN = "/api/v1/auth/login"
RIGHT = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
WRONG = {"email": ADMIN_EMAIL, "password": "not the password"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "login_max_failures": 3,
            "login_ip_max_failures": 5,
            "login_lockout_seconds": 600,
            "login_failure_window_seconds": 600,
        }
    )


def _assert_locked(r: httpx.Response, what: str) -> None:
    assert r.status_code == 429, r.text
    retry_after = int(r.headers["Retry-After"])
    assert 590 <= retry_after <= 600
    detail = r.json()["detail"]
    assert f"too many failed logins for {what}" in detail
    assert f"try again in {retry_after} seconds" in detail
    assert r.json()["code"] == "too_many_requests"


def test_failures_lock_the_account_even_for_the_right_password(api: TestClient) -> None:
    for _ in range(3):
        assert api.post(LOGIN, json=WRONG).status_code == 401
    _assert_locked(api.post(LOGIN, json=RIGHT), "this account")
    # the email's case does not make it another account
    _assert_locked(api.post(LOGIN, json={**RIGHT, "email": ADMIN_EMAIL.upper()}), "this account")


def test_a_successful_login_clears_the_account_count(api: TestClient) -> None:
    for _ in range(2):
        assert api.post(LOGIN, json=WRONG).status_code == 401
    assert api.post(LOGIN, json=RIGHT).status_code == 200
    for _ in range(2):
        assert api.post(LOGIN, json=WRONG).status_code == 401
    assert api.post(LOGIN, json=RIGHT).status_code == 200


def test_failures_over_many_accounts_lock_the_callers_address_only(app: FastAPI) -> None:
    with TestClient(app, client=("203.0.113.7", 4000)) as attacker:
        for i in range(5):  # unknown accounts: each stays under its own limit
            r = attacker.post(LOGIN, json={"email": f"guess{i}@example.com", "password": "x"})
            assert r.status_code == 401
        _assert_locked(attacker.post(LOGIN, json=RIGHT), "your address")
    with TestClient(app, client=("198.51.100.2", 4000)) as admin:
        assert admin.post(LOGIN, json=RIGHT).status_code == 200


def test_the_lockout_is_shared_by_every_api_process(settings: Settings, api: TestClient) -> None:
    """A second app on the same database (another `fedlora serve` worker) sees the lockout."""
    for _ in range(3):
        assert api.post(LOGIN, json=WRONG).status_code == 401
    with TestClient(create_app(settings, enqueuer=RecordingEnqueuer())) as other:
        _assert_locked(other.post(LOGIN, json=RIGHT), "this account")


def test_the_lockout_ends_and_nothing_typed_is_stored(
    api: TestClient, app_sessions: sessionmaker[Session]
) -> None:
    for _ in range(3):
        api.post(LOGIN, json={"email": ADMIN_EMAIL, "password": "hunter2-typed-secret"})
    with app_sessions() as session:
        rows = session.scalars(sa.select(LoginThrottle)).all()
        stored = " ".join(f"{r.key} {r.failures}" for r in rows)
        assert ADMIN_EMAIL not in stored
        assert "testclient" not in stored
        session.execute(sa.update(LoginThrottle).values(locked_until=utcnow() - timedelta(1)))
        session.commit()
    assert api.post(LOGIN, json=RIGHT).status_code == 200
    # the expired account row is gone after the success; a new failure starts from one
    assert api.post(LOGIN, json=WRONG).status_code == 401
    assert api.post(LOGIN, json=RIGHT).status_code == 200


def test_windows_that_passed_start_the_count_again(
    api: TestClient, app_sessions: sessionmaker[Session]
) -> None:
    for _ in range(2):
        assert api.post(LOGIN, json=WRONG).status_code == 401
    with app_sessions() as session:  # the two failures are older than the window
        old = utcnow() - timedelta(seconds=601)
        session.execute(sa.update(LoginThrottle).values(window_started_at=old))
        session.commit()
    for _ in range(2):
        assert api.post(LOGIN, json=WRONG).status_code == 401
    assert api.post(LOGIN, json=RIGHT).status_code == 200


# ---------------------------------------------------------------- bounded password hashing


@pytest.fixture
def slow_hashing(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every password check takes 0.2 s; yields the peak number running at once."""
    lock, running, peak = threading.Lock(), [0], [0]
    real = identity.verify_password

    def verify(password: str, password_hash: str) -> bool:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.2)
            return real(password, password_hash)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(identity, "verify_password", verify)
    return peak


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_concurrent_logins_hash_at_most_the_configured_number_at_once(
    settings: Settings, slow_hashing: list[int]
) -> None:
    bounded = settings.model_copy(
        update={"password_hash_concurrency": 2, "password_hash_wait_seconds": 30.0}
    )
    app = create_app(bounded, enqueuer=RecordingEnqueuer())
    with TestClient(app) as api, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: api.post(LOGIN, json=RIGHT).status_code, range(8)))
    assert codes == [200] * 8
    assert slow_hashing == [2]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_full_hashing_gate_answers_503_with_retry_after(api: TestClient, app: FastAPI) -> None:
    app.state.password_gate = PasswordGate(slots=1, wait_seconds=0.0)
    with app.state.password_gate.slot() as held:
        assert held
        r = api.post(LOGIN, json=WRONG)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert "busy" in r.json()["detail"]
    # refused before the check: it counted as no failure
    for _ in range(2):
        assert api.post(LOGIN, json=WRONG).status_code == 401
    assert api.post(LOGIN, json=RIGHT).status_code == 200


def test_the_gate_gives_up_after_its_wait() -> None:
    gate = PasswordGate(slots=1, wait_seconds=0.05)
    with gate.slot() as first:
        start = time.perf_counter()
        with gate.slot() as second:
            assert (first, second) == (True, False)
        assert time.perf_counter() - start >= 0.05
    with gate.slot() as again:
        assert again
