"""The real API app served over HTTP by uvicorn in a thread (SQLite and Postgres), for the
``fedlora`` admin commands, which reach it exactly as they reach a deployed server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from fedlora.local import free_port
from tests.api.conftest import (  # noqa: F401  (re-exported fixtures)
    _fast_password_hashing,
    app,
    app_sessions,
    db_url,
    enqueued,
    pg_session_url,
    settings,
    store,
)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def live_url(app: FastAPI) -> Iterator[str]:  # noqa: F811
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the API did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=15)
