"""The one place jobs are enqueued. Services record jobs on the session; they go out after commit.

``defer(session, name, *args)`` remembers a job; ``flush(session, enqueue)`` sends the remembered
jobs and is called by services right after their ``session.commit()``. A rolled-back
transaction's jobs are dropped by :func:`discard`. The default :class:`CeleryEnqueuer` uses
``send_task`` by name, so the API never imports the worker's torch code; tests pass a
:class:`RecordingEnqueuer`.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from sqlalchemy.orm import Session

from api.config import Settings, get_settings

_JOBS = "fedlora_jobs"
log = logging.getLogger(__name__)


class Enqueuer(Protocol):
    def __call__(self, name: str, args: list[str]) -> None: ...


class CeleryEnqueuer:
    """Sends jobs through the Celery app configured from ``settings`` (created lazily)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._app: Any = None

    def __call__(self, name: str, args: list[str]) -> None:
        if self._app is None:
            from worker.celery_app import create_celery

            self._app = create_celery(self._settings or get_settings())
        self._app.send_task(name, args=args)


class RecordingEnqueuer:
    """Collects jobs instead of sending them (tests, and callers that batch)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, list[str]]] = []

    def __call__(self, name: str, args: list[str]) -> None:
        self.jobs.append((name, list(args)))

    def names(self) -> list[str]:
        return [name for name, _ in self.jobs]


_default: Enqueuer | None = None


def default_enqueuer() -> Enqueuer:
    global _default
    if _default is None:
        _default = CeleryEnqueuer()
    return _default


def defer(session: Session, name: str, *args: str) -> None:
    session.info.setdefault(_JOBS, []).append((name, list(args)))


def discard(session: Session) -> None:
    session.info.pop(_JOBS, None)


def flush(session: Session, enqueue: Enqueuer | None) -> None:
    """Send the jobs deferred on ``session``; call only after a successful commit.

    A broker failure is logged, not raised: the commit stands, and the database records what
    is owed (``open_requested_at``, ``aggregation_enqueued_at``), so the sweeper re-sends it.
    """
    jobs: list[tuple[str, list[str]]] = session.info.pop(_JOBS, [])
    if not jobs:
        return
    sender = enqueue or default_enqueuer()
    for name, args in jobs:
        try:
            sender(name, args)
        except Exception:
            log.exception("could not enqueue %s%s; the sweeper will re-send it", name, args)


def commit_and_flush(session: Session, enqueue: Enqueuer | None) -> None:
    try:
        session.commit()
    except BaseException:
        discard(session)
        raise
    flush(session, enqueue)
