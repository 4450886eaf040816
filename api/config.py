"""Settings for every fedlora process (API, worker, CLI), read from ``FEDLORA_*`` variables.

The defaults form the embedded setup: a SQLite database, a local artifact directory and a
broker on a SQLite file, all under ``data_dir``, so ``fedlora demo`` needs no server process.
Production sets ``FEDLORA_DATABASE_URL=postgresql+psycopg://...``,
``FEDLORA_BROKER_URL=redis://...`` and a real ``FEDLORA_SECRET_KEY``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset({"", "change-me", "dev-insecure-change-me", "changeme", "secret"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDLORA_", env_file=None, extra="ignore")

    environment: Literal["development", "production"] = Field(
        default="development",
        description="'production' refuses placeholder secrets and the embedded broker.",
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
        description="Signs admin tokens. Must be changed outside development.",
    )
    access_token_minutes: int = Field(default=12 * 60, ge=1, description="Admin token lifetime.")
    bootstrap_admin_email: str | None = Field(
        default=None, description="Create this admin at start-up if no admin exists."
    )
    bootstrap_admin_password: str | None = Field(default=None, repr=False)
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
    cors_origins: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _production_is_safe(self) -> Settings:
        weak = self.secret_key.strip().lower() in PLACEHOLDER_SECRETS or len(self.secret_key) < 32
        if self.environment == "production" and weak:
            raise ValueError(
                "FEDLORA_SECRET_KEY is a placeholder or shorter than 32 characters; "
                "generate one with `python -c 'import secrets; print(secrets.token_hex(32))'`"
            )
        return self

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
