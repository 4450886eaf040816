"""docker-compose.yml describes what the code really runs.

No Docker engine runs here, so instead of starting the stack these tests check every reference
the compose file and the Dockerfile make: build targets, copied paths, the ``fedlora``
sub-commands and their options, the Alembic set-up, and the secrets the API refuses to start
with. ``docker-compose config`` (run by scripts/test) checks the file's syntax and semantics.
"""

from __future__ import annotations

import re
import secrets
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from pydantic import ValidationError

from api.config import Settings
from fedlora.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def _argvs(command: list[str] | str) -> list[list[str]]:
    """Split a service command into the programs it runs (``sh -c "a && exec b"`` -> a, b)."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if argv[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in re.split(r"&&|;", argv[2])]
    return [argv]


def _check_fedlora_argv(argv: list[str]) -> None:
    commands: dict[str, Any] = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    sub = commands.get(argv[1])
    assert sub is not None, f"`fedlora {argv[1]}` is not a command of fedlora.cli"
    options = {opt for p in sub.params for opt in getattr(p, "opts", [])}
    for arg in argv[2:]:
        if arg.startswith("--"):
            assert arg.split("=")[0] in options, f"`fedlora {argv[1]}` has no option {arg}"


def test_every_service_runs_something_that_exists() -> None:
    checked = 0
    for name, service in SERVICES.items():
        command = service.get("command")
        if command is None:
            continue
        for argv in _argvs(command):
            if argv and argv[0] == "exec":
                argv = argv[1:]
            if argv[0] == "fedlora":
                _check_fedlora_argv(argv)
                checked += 1
            elif argv[0] == "alembic":
                assert (ROOT / "alembic.ini").is_file(), f"{name}: alembic.ini is missing"
                assert (ROOT / "migrations" / "env.py").is_file(), f"{name}: no migrations/env.py"
                checked += 1
            else:
                assert "image" in service, f"{name}: {argv[0]} must come from a named image"
    assert checked >= 4  # api (alembic + serve), worker, scheduler


def test_build_targets_and_copied_paths_exist() -> None:
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE, flags=re.M))
    for name, service in SERVICES.items():
        build = service.get("build")
        if build:
            assert build["target"] in targets, f"{name}: Dockerfile has no target {build}"
    for src in re.findall(r"^COPY (?!--from)(\S+(?: \S+)*) \S+$", DOCKERFILE, flags=re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"
    assert (ROOT / "deploy" / "nginx.conf").is_file()


def test_worker_gpu_reservation_is_written_in() -> None:
    devices = SERVICES["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert devices[0]["driver"] == "nvidia"


def test_env_example_defines_every_required_variable() -> None:
    env_example = (ROOT / ".env.example").read_text()
    defined = set(re.findall(r"^([A-Z_]+)=", env_example, flags=re.M))
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+)\}", text))  # ${VAR} without a :- default
    assert required <= defined, f"missing from .env.example: {sorted(required - defined)}"


def test_production_refuses_the_placeholder_secret() -> None:
    placeholder = re.search(r"^FEDLORA_SECRET_KEY=(.*)$", (ROOT / ".env.example").read_text(), re.M)
    assert placeholder is not None
    with pytest.raises(ValidationError, match="FEDLORA_SECRET_KEY is a placeholder"):
        Settings(environment="production", secret_key=placeholder.group(1))
    real = {  # a generated key, with the compose file's Postgres and Redis, is accepted
        "secret_key": secrets.token_hex(32),
        "database_url": "postgresql+psycopg://fedlora:pw@postgres:5432/fedlora",
        "broker_url": "redis://redis:6379/0",
    }
    Settings(environment="production", **real)
