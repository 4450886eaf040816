"""Worker health: no worker -> the API says so and since when; a heartbeat -> it does not."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.db import WorkerKind, utcnow
from api.services import workers

QUEUE = "aggregation"


def _register(
    sessions: sessionmaker[Session],
    kind: WorkerKind = WorkerKind.WORKER,
    *,
    ago: float = 0.0,
    interval: float = 10.0,
    queues: tuple[str, ...] = (QUEUE,),
) -> object:
    with sessions() as session:
        return workers.register(
            session=session,
            kind=kind,
            hostname="host-1",
            pid=4242,
            queues=queues if kind is WorkerKind.WORKER else (),
            interval_seconds=interval,
            now=utcnow() - timedelta(seconds=ago),
        )


def test_no_worker_ever_the_api_says_so(api: TestClient, admin_headers: dict[str, str]) -> None:
    r = api.get("/healthz/workers")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "no_worker"
    assert body["workers_alive"] == 0
    assert body["last_worker_seen_at"] is None
    assert body["message"].startswith("No aggregation worker has ever reported: rounds will not")
    assert "fedlora worker --beat" in body["message"]

    ready = api.get("/readyz")  # the API itself is ready; the missing worker is reported
    assert ready.status_code == 200
    assert ready.json()["workers"]["status"] == "no_worker"

    listed = api.get("/api/v1/workers", headers=admin_headers).json()
    assert listed["status"] == "no_worker"
    assert listed["processes"] == []


def test_a_heartbeat_makes_the_api_quiet(
    api: TestClient, app_sessions: sessionmaker[Session], admin_headers: dict[str, str]
) -> None:
    _register(app_sessions)
    _register(app_sessions, WorkerKind.SCHEDULER)
    r = api.get("/healthz/workers")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok"
    assert r.json()["message"] is None
    assert api.get("/readyz").json()["workers"]["workers_alive"] == 1
    listed = api.get("/api/v1/workers", headers=admin_headers).json()
    assert {(p["kind"], p["alive"]) for p in listed["processes"]} == {
        ("worker", True),
        ("scheduler", True),
    }


def test_a_silent_worker_is_gone_after_three_intervals_and_the_api_says_since_when(
    api: TestClient, app_sessions: sessionmaker[Session]
) -> None:
    _register(app_sessions, ago=25, interval=10)  # 2.5 intervals: still alive
    assert api.get("/healthz/workers").json()["workers_alive"] == 1
    with app_sessions() as session:
        workers.register(
            session=session, kind=WorkerKind.SCHEDULER, hostname="h", pid=1, queues=(),
            interval_seconds=10,
        )  # fmt: skip
        row_id = workers.register(
            session=session, kind=WorkerKind.WORKER, hostname="h", pid=2, queues=(QUEUE,),
            interval_seconds=10, now=utcnow() - timedelta(seconds=31),
        )  # fmt: skip
    body = api.get("/healthz/workers").json()
    assert body["workers_alive"] == 1  # the first one, 25 s ago
    with app_sessions() as session:  # the first one stops reporting too: none is alive
        for row, _alive in workers.health(session=session, queue=QUEUE).processes:
            if row.id != row_id and row.kind == WorkerKind.WORKER:
                row.last_seen_at = utcnow() - timedelta(seconds=40)
        session.commit()
        last = max(
            r.last_seen_at
            for r, _ in workers.health(session=session, queue=QUEUE).processes
            if r.kind == WorkerKind.WORKER
        )
    r = api.get("/healthz/workers")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "no_worker"
    since = last.isoformat(timespec="seconds")
    assert body["message"].startswith(f"No aggregation worker has reported since {since}")


def test_a_clean_shutdown_counts_at_once_and_other_queues_do_not_count(
    api: TestClient, app_sessions: sessionmaker[Session]
) -> None:
    _register(app_sessions, WorkerKind.SCHEDULER)
    _register(app_sessions, queues=("another-queue",))
    assert api.get("/healthz/workers").json()["status"] == "no_worker"
    worker_id = _register(app_sessions)
    assert api.get("/healthz/workers").json()["status"] == "ok"
    with app_sessions() as session:
        workers.stop(session=session, heartbeat_id=worker_id)  # type: ignore[arg-type]
    assert api.get("/healthz/workers").json()["status"] == "no_worker"
    with app_sessions() as session:  # a beat after a stop (a restart of the same row) revives
        assert workers.beat(session=session, heartbeat_id=worker_id)  # type: ignore[arg-type]
    assert api.get("/healthz/workers").json()["status"] == "ok"


def test_a_worker_without_a_scheduler_is_reported(
    api: TestClient, app_sessions: sessionmaker[Session]
) -> None:
    _register(app_sessions)
    r = api.get("/healthz/workers")
    assert r.status_code == 503
    assert r.json()["status"] == "no_scheduler"
    assert "No scheduler has ever reported: round deadlines" in r.json()["message"]


def test_registering_prunes_processes_gone_for_a_week(
    api: TestClient, app_sessions: sessionmaker[Session]
) -> None:
    _register(app_sessions, ago=3600)
    _register(app_sessions, ago=8 * 24 * 3600)
    with app_sessions() as session:
        assert len(workers.health(session=session, queue=QUEUE).processes) == 2
    _register(app_sessions)
    with app_sessions() as session:
        assert len(workers.health(session=session, queue=QUEUE).processes) == 2
