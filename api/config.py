"""Settings for every fedlora process (API, worker, CLI), read from ``FEDLORA_*`` variables.

The defaults form the embedded setup: a SQLite database, a local artifact directory and a
broker on a SQLite file, all under ``data_dir``, so ``fedlora demo`` needs no server process.
Production sets ``FEDLORA_DATABASE_URL=postgresql+psycopg://...``,
``FEDLORA_BROKER_URL=redis://...`` and a real ``FEDLORA_SECRET_KEY``.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset(
    {"", "change-me", "dev-insecure-change-me", "changeme", "secret", "password", "admin"}
)
"""Values no production secret or password may have (``.env.example`` ships ``change-me``)."""
MIN_SECRET_KEY_LENGTH = 32
MIN_SECRET_KEY_BITS = 100
MIN_PASSWORD_LENGTH = 12
GENERATE_KEY = "python -c 'import secrets; print(secrets.token_hex(32))'"
GENERATE_PASSWORD = "python -c 'import secrets; print(secrets.token_urlsafe(18))'"  # noqa: S105


def _estimated_bits(text: str) -> float:
    """Shannon entropy of the text's own character frequencies, times its length.

    A heuristic, not a measure of randomness: it catches repeated characters and short
    alphabets ("xxxx...", "abab..."), which a generated key never has. ``token_hex(32)``
    scores about 240 bits, ``token_urlsafe(32)`` about 210.
    """
    counts = Counter(text)
    n = len(text)
    return -sum(c * math.log2(c / n) for c in counts.values()) if n else 0.0


def secret_key_weakness(key: str) -> str | None:
    """Why ``key`` cannot sign production tokens, or ``None`` if it can."""
    if key.strip().lower() in PLACEHOLDER_SECRETS:
        return "is a placeholder"
    if len(key) < MIN_SECRET_KEY_LENGTH:
        return f"is shorter than {MIN_SECRET_KEY_LENGTH} characters"
    if _estimated_bits(key) < MIN_SECRET_KEY_BITS:
        return "has too little entropy (repeated characters or a tiny alphabet)"
    return None


def password_weakness(password: str, *, email: str | None = None) -> str | None:
    """Why ``password`` is too weak for an admin account, or ``None`` if it is acceptable."""
    if password.strip().lower() in PLACEHOLDER_SECRETS:
        return "is a placeholder (the value in .env.example or a common default)"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"is shorter than {MIN_PASSWORD_LENGTH} characters"
    if len(set(password)) < 5:
        return "uses fewer than 5 different characters"
    if email and password.strip().lower() in {email.lower(), email.split("@")[0].lower()}:
        return "is the admin's email address"
    return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDLORA_", env_file=None, extra="ignore")

    environment: Literal["development", "production"] = Field(
        default="development",
        description="'production' refuses to start with a weak secret key or bootstrap admin "
        "password, the embedded SQLite database or broker, or CORS '*', and protects /metrics "
        "and the API docs by default.",
    )
    data_dir: Path = Field(
        default=Path("fedlora-data"),
        description="Root for the embedded database, broker and artifacts.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default sqlite:///<data_dir>/fedlora.sqlite.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker; default a SQLite-file broker under data_dir (no server).",
    )
    artifact_dir: Path | None = Field(
        default=None, description="Artifact store directory; default <data_dir>/artifacts."
    )
    secret_key: str = Field(
        default="dev-insecure-change-me",
        description="Signs admin tokens. Must be changed outside development: 32+ random "
        f"characters, e.g. from `{GENERATE_KEY}`.",
        repr=False,
    )
    access_token_minutes: int = Field(default=12 * 60, ge=1, description="Admin token lifetime.")
    bootstrap_admin_email: str | None = Field(
        default=None, description="Create this admin at start-up if no admin exists."
    )
    bootstrap_admin_password: str | None = Field(
        default=None,
        repr=False,
        description=f"The bootstrap admin's password; in production {MIN_PASSWORD_LENGTH}+ "
        "characters and not the .env.example value.",
    )
    login_max_failures: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Failed logins to one account within login_failure_window_seconds before "
        "the account is locked for login_lockout_seconds (429 with Retry-After).",
    )
    login_ip_max_failures: int = Field(
        default=20,
        ge=1,
        le=100_000,
        description="Failed logins from one client IP (any accounts) within the window before "
        "that IP is locked out the same way.",
    )
    login_failure_window_seconds: int = Field(
        default=15 * 60, ge=1, le=7 * 24 * 3600, description="Window that failures count in."
    )
    login_lockout_seconds: int = Field(
        default=15 * 60, ge=1, le=7 * 24 * 3600, description="How long a lockout lasts."
    )
    password_hash_concurrency: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Password hashes (argon2id: 64 MiB each) one API process computes at "
        "once; a login that cannot start one within password_hash_wait_seconds gets 503.",
    )
    password_hash_wait_seconds: float = Field(
        default=5.0, ge=0, le=60, description="How long a login waits for a hashing slot."
    )
    protect_docs_and_metrics: bool | None = Field(
        default=None,
        description="Require an admin token (or metrics_token, for /metrics) for /metrics and "
        "the OpenAPI document, and turn the interactive docs off. Default: on in production, "
        "off in development.",
    )
    metrics_token: str | None = Field(
        default=None,
        min_length=32,
        repr=False,
        description="A long-lived bearer token Prometheus may scrape /metrics with while "
        "protect_docs_and_metrics is on (admin tokens expire).",
    )
    max_upload_bytes: int = Field(
        default=4 * 1024**3, ge=1024, description="Largest accepted update file."
    )
    max_header_bytes: int = Field(
        default=16 * 1024**2, ge=1024, description="Largest accepted safetensors JSON header."
    )
    max_json_body_bytes: int = Field(
        default=2 * 1024**2,
        ge=1024,
        description="Largest accepted JSON request body (update files are not JSON).",
    )
    long_poll_seconds: float = Field(
        default=25.0, ge=0, le=120, description="Longest wait of GET /client/tasks/next."
    )
    lease_seconds: int = Field(
        default=3600, ge=10, description="How long a client holds a task before it is re-offered."
    )
    sweep_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often deadlines and leases are enforced."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Aggregation device; 'auto' uses CUDA when present."
    )
    aggregation_claim_seconds: float = Field(
        default=60.0,
        ge=1,
        description="An aggregation job's claim on a round, renewed while it runs; a job that "
        "dies is noticed (and its round enqueued again) this long after its last renewal.",
    )
    worker_heartbeat_seconds: float = Field(
        default=10.0,
        ge=0.5,
        le=600,
        description="How often each worker and scheduler process reports to the database; the "
        "API counts one as gone after three intervals without a report.",
    )
    job_soft_time_limit: int = Field(default=1800, ge=10, description="Seconds, per job.")
    job_time_limit: int = Field(default=2100, ge=10, description="Hard limit, per job.")
    aggregation_queue: str = Field(default="aggregation")
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser (the dashboard served by "
        "the API needs none); '*' is refused in production.",
    )

    @model_validator(mode="after")
    def _production_is_safe(self) -> Settings:
        """In production, refuse every setting that is only safe on a developer's machine.

        All problems are reported at once, each with the variable to set and how.
        """
        if self.environment != "production":
            return self
        problems: list[str] = []
        key_weakness = secret_key_weakness(self.secret_key)
        if key_weakness:
            problems.append(
                f"FEDLORA_SECRET_KEY {key_weakness}; generate one with `{GENERATE_KEY}`"
            )
        password = self.bootstrap_admin_password
        weakness = (
            password_weakness(password, email=self.bootstrap_admin_email) if password else None
        )
        if weakness:
            problems.append(
                f"FEDLORA_BOOTSTRAP_ADMIN_PASSWORD {weakness}; set {MIN_PASSWORD_LENGTH}+ "
                f"characters, e.g. from `{GENERATE_PASSWORD}` (or unset it once the first "
                "admin exists)"
            )
        if self.resolved_database_url.startswith("sqlite"):
            problems.append(
                "FEDLORA_DATABASE_URL is the embedded SQLite database; set a PostgreSQL URL, "
                "e.g. postgresql+psycopg://user:password@host:5432/fedlora"
            )
        if self.resolved_broker_url.startswith(("sqla+", "sqlite", "memory", "filesystem")):
            problems.append(
                "FEDLORA_BROKER_URL is the embedded broker; set a Redis URL, "
                "e.g. redis://host:6379/0"
            )
        if "*" in self.cors_origins:
            problems.append(
                "FEDLORA_CORS_ORIGINS contains '*'; list the dashboard's origins instead, "
                'e.g. ["https://fedlora.example.org"] (none are needed when the API serves it)'
            )
        if problems:
            raise ValueError("production settings refused: " + "; ".join(problems))
        return self

    @property
    def docs_and_metrics_protected(self) -> bool:
        if self.protect_docs_and_metrics is not None:
            return self.protect_docs_and_metrics
        return self.environment == "production"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'fedlora.sqlite').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    @property
    def resolved_artifact_dir(self) -> Path:
        return (self.artifact_dir or self.data_dir / "artifacts").resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own ``Settings`` instead)."""
    return Settings()
