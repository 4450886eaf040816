"""``fedlora serve`` migrates the database and serves the API (a real uvicorn process)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from fedlora.cli import app as cli
from tests.api.conftest import DB_KINDS, create_pg_database, drop_pg_database, redis_url

ROOT = Path(__file__).resolve().parents[2]


def test_serve_is_a_documented_command() -> None:
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--workers", "--no-migrate"):
        assert option in result.output


@pytest.fixture(params=DB_KINDS)
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'serve.sqlite'}"
        return
    url = create_pg_database("fedlora_serve")
    yield url
    drop_pg_database(url)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_migrates_an_empty_database_and_answers(empty_db: str, tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "FEDLORA_DATABASE_URL": empty_db,
        "FEDLORA_DATA_DIR": str(tmp_path),
        "FEDLORA_BROKER_URL": redis_url(),
        "FEDLORA_BOOTSTRAP_ADMIN_EMAIL": "root@example.com",
        "FEDLORA_BOOTSTRAP_ADMIN_PASSWORD": "serve-test-password",
    }
    code = "from fedlora.cli import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "fedlora serve did not come up within 60 s"
            time.sleep(0.2)
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        login = httpx.post(
            f"{base}/api/v1/auth/login",
            json={"email": "root@example.com", "password": "serve-test-password"},
            timeout=10,
        )
        assert login.status_code == 200, login.text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout:
            proc.stdout.close()
