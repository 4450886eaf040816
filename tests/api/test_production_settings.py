"""Production mode refuses what is only safe on a developer's machine, and says what to set."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from api.config import Settings, password_weakness, secret_key_weakness

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = (ROOT / ".env.example").read_text()


def _example(name: str) -> str:
    found = re.search(rf"^{name}=(.*)$", ENV_EXAMPLE, re.M)
    assert found is not None, name
    return found.group(1)


def production(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "production",
        "secret_key": secrets.token_hex(32),
        "database_url": "postgresql+psycopg://fedlora:pw@db:5432/fedlora",
        "broker_url": "redis://redis:6379/0",
        "bootstrap_admin_email": "admin@example.org",
        "bootstrap_admin_password": secrets.token_urlsafe(18),
        "cors_origins": ["https://fedlora.example.org"],
    }
    values.update(overrides)
    return Settings(**values)


def test_a_real_production_configuration_is_accepted() -> None:
    production()
    assert production(bootstrap_admin_password=None).bootstrap_admin_password is None


@pytest.mark.parametrize(
    ("overrides", "variable", "says"),
    [
        ({"secret_key": _example("FEDLORA_SECRET_KEY")}, "FEDLORA_SECRET_KEY", "placeholder"),
        ({"secret_key": "x" * 32}, "FEDLORA_SECRET_KEY", "too little entropy"),
        ({"secret_key": "ab" * 40}, "FEDLORA_SECRET_KEY", "too little entropy"),
        ({"secret_key": secrets.token_hex(8)}, "FEDLORA_SECRET_KEY", "shorter than 32"),
        (
            {"bootstrap_admin_password": _example("FEDLORA_BOOTSTRAP_ADMIN_PASSWORD")},
            "FEDLORA_BOOTSTRAP_ADMIN_PASSWORD",
            "placeholder",
        ),
        ({"bootstrap_admin_password": "a"}, "FEDLORA_BOOTSTRAP_ADMIN_PASSWORD", "shorter than 12"),
        (
            {"bootstrap_admin_password": "1111111111111111"},
            "FEDLORA_BOOTSTRAP_ADMIN_PASSWORD",
            "fewer than 5 different",
        ),
        ({"database_url": None}, "FEDLORA_DATABASE_URL", "embedded SQLite"),
        ({"database_url": "sqlite:////srv/fedlora.sqlite"}, "FEDLORA_DATABASE_URL", "PostgreSQL"),
        ({"broker_url": None}, "FEDLORA_BROKER_URL", "embedded broker"),
        ({"broker_url": "sqla+sqlite:////srv/b.sqlite"}, "FEDLORA_BROKER_URL", "redis://"),
        ({"cors_origins": ["*"]}, "FEDLORA_CORS_ORIGINS", "'*'"),
    ],
)
def test_production_refuses_and_says_what_to_set(
    overrides: dict[str, Any], variable: str, says: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        production(**overrides)
    message = str(exc.value)
    assert variable in message
    assert says in message
    assert re.search(r"\b(set|generate|list)\b", message)
    Settings(**{**overrides, "environment": "development"})  # development accepts each


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(environment="production", bootstrap_admin_password="x", cors_origins=["*"])
    message = str(exc.value)
    for variable in (
        "FEDLORA_SECRET_KEY",
        "FEDLORA_BOOTSTRAP_ADMIN_PASSWORD",
        "FEDLORA_DATABASE_URL",
        "FEDLORA_BROKER_URL",
        "FEDLORA_CORS_ORIGINS",
    ):
        assert variable in message


def test_generated_secrets_pass_the_checks() -> None:
    for _ in range(20):
        assert secret_key_weakness(secrets.token_hex(32)) is None
        assert secret_key_weakness(secrets.token_hex(16)) is None
        assert secret_key_weakness(secrets.token_urlsafe(32)) is None
        assert password_weakness(secrets.token_urlsafe(18)) is None
    assert password_weakness("Admin@Example.org", email="admin@example.org") is not None
