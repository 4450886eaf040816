"""Alembic builds the schema on empty SQLite and Postgres, matches the models, and round-trips."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from api.db import Base, create_db_engine
from tests.api.conftest import DB_KINDS, create_pg_database, drop_pg_database

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=DB_KINDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.sqlite'}"
        return
    url = create_pg_database("fedlora_migrate")
    yield url
    drop_pg_database(url)


def _config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def _tables(url: str) -> set[str]:
    engine = create_db_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _diff(url: str) -> list[object]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def test_upgrade_head_builds_the_schema_without_drift(empty_url: str) -> None:
    command.upgrade(_config(empty_url), "head")
    assert _tables(empty_url) == set(Base.metadata.tables)
    assert _diff(empty_url) == []


def test_downgrade_base_and_upgrade_again(empty_url: str) -> None:
    cfg = _config(empty_url)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    assert _tables(empty_url) == set()
    command.upgrade(cfg, "head")
    assert _tables(empty_url) == set(Base.metadata.tables)
    assert _diff(empty_url) == []
