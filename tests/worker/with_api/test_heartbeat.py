"""A worker process's heartbeat: registered at start, refreshed by its thread, stopped cleanly."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.config import Settings
from api.db import WorkerHeartbeat, WorkerKind
from api.services import workers
from worker.heartbeat import Heartbeat


def _row(sessions: sessionmaker[Session], beat: Heartbeat) -> WorkerHeartbeat:
    with sessions() as session:
        return session.get_one(WorkerHeartbeat, beat.id)


def test_heartbeat_reports_until_stopped(
    settings: Settings, api: TestClient, app_sessions: sessionmaker[Session]
) -> None:
    beat = Heartbeat(settings, WorkerKind.WORKER, queues=["aggregation"], interval=0.2).start()
    try:
        first = _row(app_sessions, beat)  # registered before start() returns
        assert first.stopped_at is None
        assert first.queues == ["aggregation"]
        with app_sessions() as session:
            assert workers.health(session=session, queue="aggregation").workers_alive == 1
        deadline = time.monotonic() + 10
        while _row(app_sessions, beat).last_seen_at <= first.last_seen_at:
            assert time.monotonic() < deadline, "the heartbeat thread never refreshed its row"
            time.sleep(0.1)
    finally:
        beat.stop()
    stopped = _row(app_sessions, beat)
    assert stopped.stopped_at is not None
    with app_sessions() as session:
        health = workers.health(session=session, queue="aggregation")
    assert health.workers_alive == 0
    assert health.last_worker_seen_at == stopped.last_seen_at


def test_heartbeat_registers_again_when_its_row_was_pruned(
    settings: Settings, api: TestClient, app_sessions: sessionmaker[Session]
) -> None:
    beat = Heartbeat(settings, WorkerKind.SCHEDULER, interval=0.2).start()
    try:
        gone = beat.id
        with app_sessions() as session:
            session.delete(session.get_one(WorkerHeartbeat, gone))
            session.commit()
        deadline = time.monotonic() + 10
        while beat.id in (gone, None):
            assert time.monotonic() < deadline, "the heartbeat never registered again"
            time.sleep(0.1)
        with app_sessions() as session:
            assert workers.health(session=session, queue="q").schedulers_alive == 1
    finally:
        beat.stop()
