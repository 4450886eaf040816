"""SQLAlchemy 2.0 models (Mapped[...]) and the session factory. Importing registers every table."""

from api.db.base import Base, utcnow
from api.db.evaluations import AdapterEvaluation
from api.db.federation import Federation, FederationStatus, Membership
from api.db.identity import Admin, Client, JoinToken, LoginThrottle, Organization
from api.db.rounds import (
    AuditLogEntry,
    GlobalAdapter,
    PrivacyLedgerEntry,
    Round,
    RoundKind,
    RoundState,
    Task,
    TaskStatus,
    Update,
    UploadSessionRow,
    UploadStatus,
)
from api.db.session import create_db_engine, engine_from_settings, make_session_factory
from api.db.workers import WorkerHeartbeat, WorkerKind

__all__ = [
    "AdapterEvaluation",
    "Admin",
    "AuditLogEntry",
    "Base",
    "Client",
    "Federation",
    "FederationStatus",
    "GlobalAdapter",
    "JoinToken",
    "LoginThrottle",
    "Membership",
    "Organization",
    "PrivacyLedgerEntry",
    "Round",
    "RoundKind",
    "RoundState",
    "Task",
    "TaskStatus",
    "Update",
    "UploadSessionRow",
    "UploadStatus",
    "WorkerHeartbeat",
    "WorkerKind",
    "create_db_engine",
    "engine_from_settings",
    "make_session_factory",
    "utcnow",
]
