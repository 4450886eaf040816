"""Fixtures: every database test runs on SQLite and on the real Postgres.

Postgres is never optional: if ``FEDLORA_TEST_POSTGRES_URL`` (a maintenance database) cannot be
reached the Postgres half of each test FAILS. Each test session creates its own throwaway
database with a random name and drops it at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from api.config import Settings
from api.db import Base, create_db_engine, make_session_factory
from api.main import create_app
from api.queue import RecordingEnqueuer
from api.storage import ArtifactStore

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DB_KINDS = ["sqlite", "postgres"]


def maintenance_url() -> str:
    return os.environ.get("FEDLORA_TEST_POSTGRES_URL") or DEFAULT_PG


def create_pg_database(prefix: str = "fedlora_test") -> str:
    """Create an empty database from the maintenance URL and return its URL; fail if down."""
    maint = make_url(maintenance_url())
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(maint, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"Postgres at {maint.render_as_string()} is unreachable: {exc}", False)
    finally:
        engine.dispose()
    return maint.set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    target = make_url(url)
    engine = sa.create_engine(make_url(maintenance_url()), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def pg_session_url() -> Iterator[str]:
    """One Postgres database per test session with the models' schema."""
    url = create_pg_database()
    engine = create_db_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    yield url
    drop_pg_database(url)


def _truncate(engine: sa.Engine) -> None:
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {names} CASCADE"))


@pytest.fixture(params=DB_KINDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fedlora.sqlite'}"
        engine = create_db_engine(url)
        Base.metadata.create_all(engine)
        engine.dispose()
        yield url
        return
    url = request.getfixturevalue("pg_session_url")
    yield url
    engine = create_db_engine(url)
    try:
        _truncate(engine)
    finally:
        engine.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine: sa.Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as session:
        yield session


# ---------------------------------------------------------------------------- the app


ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "correct horse battery staple"


def redis_url() -> str:
    return os.environ.get("FEDLORA_TEST_REDIS_URL") or "redis://127.0.0.1:6379/15"


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=db_url,
        data_dir=tmp_path,
        artifact_dir=tmp_path / "artifacts",
        broker_url=redis_url(),
        secret_key="test-secret-key-0123456789abcdef-0123456789",
        bootstrap_admin_email=ADMIN_EMAIL,
        bootstrap_admin_password=ADMIN_PASSWORD,
        long_poll_seconds=1.0,
        lease_seconds=60,
        max_upload_bytes=1024 * 1024,
        max_header_bytes=64 * 1024,
    )


@pytest.fixture
def enqueued() -> RecordingEnqueuer:
    return RecordingEnqueuer()


@pytest.fixture
def app(settings: Settings, enqueued: RecordingEnqueuer) -> FastAPI:
    return create_app(settings, enqueuer=enqueued)


@pytest.fixture
def api(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@pytest.fixture
def store(app: FastAPI) -> ArtifactStore:
    result: ArtifactStore = app.state.store
    return result


@pytest.fixture
def app_sessions(app: FastAPI) -> sessionmaker[Session]:
    result: sessionmaker[Session] = app.state.session_factory
    return result


@pytest.fixture
def admin_headers(api: TestClient) -> dict[str, str]:
    r = api.post("/api/v1/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture(autouse=True)
def _fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2 at production cost takes ~0.5 s a hash on CI; the tests use the cheapest setting."""
    from argon2 import PasswordHasher

    from api import security

    monkeypatch.setattr(
        security, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    )
