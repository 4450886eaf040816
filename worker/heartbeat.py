"""Worker and scheduler processes report to the database that they are alive.

:class:`Heartbeat` registers the process (``api.services.workers.register``), refreshes its row
from a daemon thread every ``settings.worker_heartbeat_seconds`` and marks it stopped when the
process shuts down cleanly. :func:`install` connects it to Celery's signals: a worker starts
its heartbeat when it is ready to consume (``worker_ready``) and stops it on
``worker_shutdown``; a scheduler (``celery beat``, standalone or embedded with ``--beat``)
starts one on ``beat_init`` and stops it when the process exits. A process killed without a
chance to say so simply stops reporting, and the API counts it gone after three intervals.

Torch-free: the API imports :mod:`worker.celery_app`, which installs this.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from celery import signals

from api.config import Settings, get_settings
from api.db import WorkerKind
from api.db.session import engine_from_settings, make_session_factory
from api.services import workers

log = logging.getLogger(__name__)


class Heartbeat:
    """One process's row in ``worker_heartbeats``, kept fresh by a daemon thread."""

    def __init__(
        self,
        settings: Settings,
        kind: WorkerKind,
        *,
        queues: Sequence[str] = (),
        hostname: str | None = None,
        interval: float | None = None,
    ) -> None:
        self.settings = settings
        self.kind = kind
        self.queues = list(queues)
        self.hostname = hostname or socket.gethostname()
        self.interval = interval or settings.worker_heartbeat_seconds
        self.id: uuid.UUID | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._engine: Any = None
        self._sessions: Any = None

    def _register(self) -> None:
        with self._sessions() as session:
            self.id = workers.register(
                session=session,
                kind=self.kind,
                hostname=self.hostname,
                pid=os.getpid(),
                queues=self.queues,
                interval_seconds=self.interval,
            )

    def start(self) -> Heartbeat:
        """Register now (so the API sees the process at once), then refresh in the background."""
        self._engine = engine_from_settings(self.settings)  # this process's own connections
        self._sessions = make_session_factory(self._engine)
        try:
            self._register()
        except Exception:  # the thread retries: a database that is down now may come back
            log.exception("%s heartbeat: could not register; retrying every beat", self.kind)
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"{self.kind}-beat")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self.id is None:
                    self._register()
                    continue
                with self._sessions() as session:
                    if not workers.beat(session=session, heartbeat_id=self.id):
                        self.id = None  # pruned meanwhile: register again on the next beat
            except Exception:  # a missed beat is not fatal; three in a row read as "gone"
                log.exception("%s heartbeat: could not report", self.kind)

    def stop(self) -> None:
        """Stop reporting and record a clean shutdown (idempotent)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        try:
            if self.id is not None:
                with self._sessions() as session:
                    workers.stop(session=session, heartbeat_id=self.id)
        except Exception:
            log.exception("%s heartbeat: could not record the shutdown", self.kind)
        finally:
            self._engine.dispose()


_running: dict[str, Heartbeat] = {}


def _consumed_queues(consumer: Any) -> list[str]:
    try:
        return sorted(q.name for q in consumer.task_consumer.queues)
    except AttributeError:
        return sorted(consumer.app.amqp.queues.consume_from)


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    hostname = getattr(sender, "hostname", None)
    _running["worker"] = Heartbeat(
        get_settings(), WorkerKind.WORKER, queues=_consumed_queues(sender), hostname=hostname
    ).start()


def _on_worker_shutdown(**_: Any) -> None:
    beat = _running.pop("worker", None)
    if beat is not None:
        beat.stop()


def _on_beat_init(**_: Any) -> None:
    beat = _running["scheduler"] = Heartbeat(get_settings(), WorkerKind.SCHEDULER).start()
    atexit.register(beat.stop)


def install() -> None:
    """Connect the heartbeats to Celery's worker and beat signals (idempotent)."""
    signals.worker_ready.connect(_on_worker_ready, weak=False, dispatch_uid="fedlora-ready")
    signals.worker_shutdown.connect(
        _on_worker_shutdown, weak=False, dispatch_uid="fedlora-shutdown"
    )
    signals.beat_init.connect(_on_beat_init, weak=False, dispatch_uid="fedlora-beat")
