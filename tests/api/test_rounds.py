"""The round state machine, through the services the worker calls, on SQLite and Postgres."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.db import Federation, GlobalAdapter, PrivacyLedgerEntry, Round, Task, utcnow
from api.queue import RecordingEnqueuer
from api.services import client_tasks, rounds
from api.services.round_types import JobMetrics
from api.storage import ArtifactStore
from tests.api.factories import adapter_bytes, make_plan, manifest_for
from tests.api.world import World, build_world, open_next_round, start

AGG = "fedlora.aggregate_round"
OPEN = "fedlora.open_round"


@pytest.fixture
def world(api: TestClient, admin_headers: dict[str, str]) -> World:
    w = build_world(api, admin_headers, min_clients=1, clients_per_round=2, num_rounds=2)
    start(api, w)
    return w


def _upload(api: TestClient, headers: dict[str, str], task_id: str, eps: float = 0.5) -> None:
    body = adapter_bytes(2)
    r = api.post(
        f"/api/v1/client/tasks/{task_id}/uploads",
        json=manifest_for(task_id, body, eps=eps),
        headers={**headers, "Idempotency-Key": f"key-{task_id}"},
    )
    assert r.status_code == 201, r.text
    r = api.patch(
        f"/api/v1/client/uploads/{r.json()['upload_id']}",
        content=body,
        headers={**headers, "Upload-Offset": "0"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "accepted"


def _lease(api: TestClient, headers: dict[str, str]) -> str:
    r = api.get("/api/v1/client/tasks/next", headers=headers)
    assert r.status_code == 200, r.text
    return str(r.json()["task_id"])


def _state(sessions: sessionmaker[Session], round_id: uuid.UUID) -> str:
    with sessions() as s:
        return s.get_one(Round, round_id).state


def test_start_enqueues_open_round_after_commit(world: World, enqueued: RecordingEnqueuer) -> None:
    assert enqueued.jobs == [(OPEN, [world.federation_id])]


def test_round_to_open_selects_eligible_members_and_open_is_idempotent(
    world: World, app_sessions: sessionmaker[Session], store: ArtifactStore
) -> None:
    fid = uuid.UUID(world.federation_id)
    with app_sessions() as s:
        todo = rounds.round_to_open(session=s, federation_id=fid)
        assert todo is not None
        assert todo.number == 1
        assert {str(m.client_id) for m in todo.selected} == {world.a1.client_id, world.b1.client_id}
        plans = {m.client_id: make_plan(store) for m in todo.selected}
        rid = rounds.open_round(session=s, federation_id=fid, number=1, plans=plans)
        assert rid is not None
        # a duplicate job: same number, or any number while a round is open -> no-op
        assert rounds.open_round(session=s, federation_id=fid, number=1, plans=plans) is None
        assert rounds.open_round(session=s, federation_id=fid, number=2, plans=plans) is None
        assert rounds.round_to_open(session=s, federation_id=fid) is None
        assert s.scalar(sa.select(sa.func.count()).select_from(Task)) == 2


def test_open_round_rejects_plans_for_non_members(
    world: World, app_sessions: sessionmaker[Session], store: ArtifactStore
) -> None:
    with app_sessions() as s, pytest.raises(ValueError, match="not active members"):
        rounds.open_round(
            session=s,
            federation_id=uuid.UUID(world.federation_id),
            number=1,
            plans={uuid.UUID(world.a2.client_id): make_plan(store)},
        )


def test_all_uploads_in_moves_to_aggregating_and_enqueues_after_commit(
    api: TestClient,
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
) -> None:
    rid = open_next_round(app_sessions, store, world.federation_id)
    t1, t2 = _lease(api, world.a1.headers), _lease(api, world.b1.headers)
    _upload(api, world.a1.headers, t1)
    assert _state(app_sessions, rid) == "open"
    _upload(api, world.b1.headers, t2)
    assert _state(app_sessions, rid) == "aggregating"
    assert enqueued.jobs[-1] == (AGG, [str(rid)])
    with app_sessions() as s:
        inputs = rounds.aggregation_inputs(session=s, round_id=rid)
        assert inputs is not None
        assert len(inputs.updates) == 2
        assert all(u.plan.lora.rank == 2 for u in inputs.updates)


def test_deadline_with_too_few_updates_fails_the_round_and_requests_a_new_one(
    api: TestClient,
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
) -> None:
    rid = open_next_round(app_sessions, store, world.federation_id)
    enqueued.jobs.clear()
    with app_sessions() as s:
        assert rounds.maybe_close_round(session=s, round_id=rid, enqueue=enqueued) == "open"
        later = utcnow() + timedelta(hours=1)
        result = rounds.sweep(session=s, now=later, enqueue=enqueued)
    assert result.rounds_failed == [rid]
    assert _state(app_sessions, rid) == "failed"
    assert enqueued.jobs == [(OPEN, [world.federation_id])]
    with app_sessions() as s:
        rnd = s.get_one(Round, rid)
        assert "0 update(s)" in (rnd.failure_reason or "")
        statuses = set(s.scalars(sa.select(Task.status).where(Task.round_id == rid)))
        assert statuses == {"dropped"}
    # the next round gets the next number
    rid2 = open_next_round(app_sessions, store, world.federation_id)
    with app_sessions() as s:
        assert s.get_one(Round, rid2).number == 2


def test_deadline_with_enough_updates_aggregates_without_the_stragglers(
    api: TestClient,
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
) -> None:
    rid = open_next_round(app_sessions, store, world.federation_id)
    _upload(api, world.a1.headers, _lease(api, world.a1.headers))
    assert _state(app_sessions, rid) == "open"  # b1 has not uploaded, deadline not passed
    with app_sessions() as s:
        result = rounds.sweep(session=s, now=utcnow() + timedelta(hours=1), enqueue=enqueued)
    assert result.rounds_aggregating == [rid]
    assert enqueued.jobs[-1] == (AGG, [str(rid)])


def _aggregate(
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    rid: uuid.UUID,
    enqueued: RecordingEnqueuer,
    *,
    with_next: bool,
) -> bool:
    with app_sessions() as s:
        assert rounds.claim_aggregation(session=s, round_id=rid, worker_id="w1", seconds=60)
        inputs = rounds.aggregation_inputs(session=s, round_id=rid)
        assert inputs is not None
        fid = inputs.federation.federation_id
        nxt = rounds.round_to_open(session=s, federation_id=fid, after_round_id=rid)
        plans = {m.client_id: make_plan(store) for m in nxt.selected} if nxt and with_next else None
        adapter = store.put_bytes(adapter_bytes(4))
        config = store.put_bytes(b'{"r": 4}')
        return rounds.publish_round(
            session=s,
            round_id=rid,
            adapter_sha256=adapter.sha256,
            adapter_config_sha256=config.sha256,
            update_ids=[u.update_id for u in inputs.updates],
            job=JobMetrics(duration_seconds=1.5, device="cpu", peak_memory_bytes=1000),
            next_number=nxt.number if nxt else None,
            next_plans=plans,
            enqueue=enqueued,
        )


def test_publish_is_conditional_opens_the_next_round_then_completes(
    api: TestClient,
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
) -> None:
    fid = uuid.UUID(world.federation_id)
    rid = open_next_round(app_sessions, store, fid)
    for party in (world.a1, world.b1):
        _upload(api, party.headers, _lease(api, party.headers), eps=0.75)
    assert _aggregate(app_sessions, store, rid, enqueued, with_next=True) is True
    with app_sessions() as s:
        # a re-delivered job finds the round completed and changes nothing
        assert not rounds.publish_round(
            session=s,
            round_id=rid,
            adapter_sha256="0" * 64,
            adapter_config_sha256="0" * 64,
            update_ids=[],
        )
        adapters = s.scalars(sa.select(GlobalAdapter)).all()
        assert len(adapters) == 1
        assert len(adapters[0].update_ids) == 2
        assert adapters[0].epsilon == pytest.approx(0.75)
        assert adapters[0].strategy == "fedavg"
        rnd = s.get_one(Round, rid)
        assert (rnd.state, rnd.job_device, rnd.job_peak_memory_bytes) == ("completed", "cpu", 1000)
        round2 = s.scalar(sa.select(Round).where(Round.federation_id == fid, Round.number == 2))
        assert round2 is not None
        assert round2.state == "open"
        rid2 = round2.id
    for party in (world.a1, world.b1):
        _upload(api, party.headers, _lease(api, party.headers), eps=0.75)
    assert _aggregate(app_sessions, store, rid2, enqueued, with_next=True) is True
    with app_sessions() as s:
        assert s.get_one(Federation, fid).status == "completed"
        assert s.scalar(sa.select(sa.func.count()).select_from(Round)) == 2
    r = api.get(f"/api/v1/federations/{fid}/ledger", headers=world.admin)
    assert r.json()["count"] == 4


def test_publish_without_next_plans_requests_an_open_round_job(
    api: TestClient,
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
) -> None:
    rid = open_next_round(app_sessions, store, world.federation_id)
    for party in (world.a1, world.b1):
        _upload(api, party.headers, _lease(api, party.headers))
    enqueued.jobs.clear()
    assert _aggregate(app_sessions, store, rid, enqueued, with_next=False)
    assert enqueued.jobs == [(OPEN, [world.federation_id])]


def test_fail_round_is_conditional(
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
) -> None:
    rid = open_next_round(app_sessions, store, world.federation_id)
    with app_sessions() as s:
        assert rounds.fail_round(session=s, round_id=rid, reason="boom", enqueue=enqueued)
        assert not rounds.fail_round(session=s, round_id=rid, reason="again", enqueue=enqueued)
    assert _state(app_sessions, rid) == "failed"


def test_sweep_reoffers_expired_leases_before_the_deadline_and_drops_them_after(
    api: TestClient,
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
) -> None:
    rid = open_next_round(app_sessions, store, world.federation_id)
    task_id = uuid.UUID(_lease(api, world.a1.headers))
    with app_sessions() as s:
        soon = utcnow() + timedelta(seconds=120)  # lease (60 s) expired, deadline (600 s) not
        result = rounds.sweep(session=s, now=soon, enqueue=enqueued)
        assert result.leases_reoffered == 1
        assert s.get_one(Task, task_id).status == "pending"
        again = client_tasks.lease_next_task(
            session=s, client_id=uuid.UUID(world.a1.client_id), lease_seconds=60
        )
        assert again is not None
        assert again.id == task_id
        assert again.lease_count == 2
        result = rounds.sweep(session=s, now=utcnow() + timedelta(hours=1), enqueue=enqueued)
        assert result.leases_dropped == 1
    assert _state(app_sessions, rid) == "failed"


def test_sweep_reenqueues_a_lost_aggregation_and_gives_up_after_max_attempts(
    api: TestClient,
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
) -> None:
    rid = open_next_round(app_sessions, store, world.federation_id)
    for party in (world.a1, world.b1):
        _upload(api, party.headers, _lease(api, party.headers))
    with app_sessions() as s:
        assert rounds.sweep(session=s, enqueue=enqueued).aggregations_reenqueued == []
        assert rounds.claim_aggregation(session=s, round_id=rid, worker_id="w1", seconds=30)
        assert not rounds.claim_aggregation(session=s, round_id=rid, worker_id="w2", seconds=30)
        later = utcnow() + timedelta(seconds=31)
        enqueued.jobs.clear()
        assert rounds.sweep(session=s, now=later, enqueue=enqueued).aggregations_reenqueued == [rid]
        assert enqueued.jobs == [(AGG, [str(rid)])]
        s.execute(
            sa.update(Round)
            .where(Round.id == rid)
            .values(
                aggregation_attempts=rounds.MAX_AGGREGATION_ATTEMPTS,
                aggregation_claimed_until=utcnow() - timedelta(seconds=1),
            )
        )
        s.commit()
        assert rounds.sweep(session=s, enqueue=enqueued).rounds_failed == [rid]
    assert _state(app_sessions, rid) == "failed"


def test_too_few_eligible_members_means_no_round(
    api: TestClient, admin_headers: dict[str, str], app_sessions: sessionmaker[Session]
) -> None:
    w = build_world(api, admin_headers, min_clients=2, clients_per_round=2)
    r = api.post(f"/api/v1/federations/{w.federation_id}/start", headers=admin_headers)
    assert r.status_code == 200
    with app_sessions() as s:
        s.execute(
            sa.text("UPDATE memberships SET fingerprint = NULL WHERE client_id = :c"),
            {
                "c": uuid.UUID(w.b1.client_id).hex
                if s.get_bind().dialect.name == "sqlite"
                else w.b1.client_id
            },
        )
        s.commit()
        assert rounds.round_to_open(session=s, federation_id=uuid.UUID(w.federation_id)) is None


def test_sweep_reenqueues_a_lost_open_round_request(
    world: World, app_sessions: sessionmaker[Session], enqueued: RecordingEnqueuer
) -> None:
    fid = uuid.UUID(world.federation_id)
    with app_sessions() as s:
        assert s.get_one(Federation, fid).open_requested_at is not None  # set by start
        assert rounds.sweep(session=s, enqueue=enqueued).opens_reenqueued == []  # not stale yet
        s.execute(
            sa.update(Federation)
            .where(Federation.id == fid)
            .values(open_requested_at=utcnow() - timedelta(minutes=10))
        )
        s.commit()
        enqueued.jobs.clear()
        result = rounds.sweep(session=s, enqueue=enqueued)
    assert result.opens_reenqueued == [fid]
    assert enqueued.jobs == [(OPEN, [world.federation_id])]


def test_a_paused_federation_hands_out_no_tasks(
    api: TestClient, world: World, app_sessions: sessionmaker[Session], store: ArtifactStore
) -> None:
    open_next_round(app_sessions, store, world.federation_id)
    r = api.post(f"/api/v1/federations/{world.federation_id}/pause", headers=world.admin)
    assert r.json()["status"] == "paused"
    assert api.get("/api/v1/client/tasks/next", headers=world.a1.headers).status_code == 204
    api.post(f"/api/v1/federations/{world.federation_id}/resume", headers=world.admin)
    assert api.get("/api/v1/client/tasks/next", headers=world.a1.headers).status_code == 200


def test_long_poll_waits_then_answers_204(api: TestClient, world: World) -> None:
    started = time.monotonic()
    r = api.get("/api/v1/client/tasks/next?wait=30", headers=world.a1.headers)
    assert r.status_code == 204
    assert 0.9 <= time.monotonic() - started < 10  # capped by settings.long_poll_seconds (1 s)


def test_concurrent_duplicate_jobs_open_and_publish_exactly_once(
    api: TestClient,
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
) -> None:
    fid = uuid.UUID(world.federation_id)
    with app_sessions() as s:
        todo = rounds.round_to_open(session=s, federation_id=fid)
    assert todo is not None
    plans = {m.client_id: make_plan(store) for m in todo.selected}
    barrier = threading.Barrier(4)

    def open_once(_: int) -> uuid.UUID | None:
        barrier.wait()
        with app_sessions() as s:
            return rounds.open_round(
                session=s, federation_id=fid, number=todo.number, plans=plans, enqueue=enqueued
            )

    with ThreadPoolExecutor(4) as pool:
        opened = [r for r in pool.map(open_once, range(4)) if r is not None]
    assert len(opened) == 1
    rid = opened[0]
    for party in (world.a1, world.b1):
        _upload(api, party.headers, _lease(api, party.headers))
    with app_sessions() as s:
        inputs = rounds.aggregation_inputs(session=s, round_id=rid)
    assert inputs is not None
    adapter = store.put_bytes(adapter_bytes(4)).sha256
    barrier = threading.Barrier(4)

    def publish_once(_: int) -> bool:
        barrier.wait()
        with app_sessions() as s:
            return rounds.publish_round(
                session=s,
                round_id=rid,
                adapter_sha256=adapter,
                adapter_config_sha256=adapter,
                update_ids=[u.update_id for u in inputs.updates],
                enqueue=enqueued,
            )

    with ThreadPoolExecutor(4) as pool:
        published = list(pool.map(publish_once, range(4)))
    assert published.count(True) == 1
    with app_sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(GlobalAdapter)) == 1
    assert [name for name, _ in enqueued.jobs].count(OPEN) == 2  # start + one publish


def test_members_past_their_epsilon_budget_or_revoked_are_not_eligible(
    api: TestClient, world: World, app_sessions: sessionmaker[Session], store: ArtifactStore
) -> None:
    fid = uuid.UUID(world.federation_id)
    rid = open_next_round(app_sessions, store, fid)
    with app_sessions() as s:
        s.add(
            PrivacyLedgerEntry(
                federation_id=fid,
                client_id=uuid.UUID(world.b1.client_id),
                round_id=rid,
                epsilon=5.0,  # the federation's epsilon_budget
            )
        )
        s.commit()
        fed = s.get_one(Federation, fid)
        eligible = {str(m.client_id) for m in rounds.eligible_members(session=s, federation=fed)}
    assert eligible == {world.a1.client_id}
    api.post(f"/api/v1/clients/{world.a1.client_id}/revoke", headers=world.admin)
    with app_sessions() as s:
        fed = s.get_one(Federation, fid)
        assert rounds.eligible_members(session=s, federation=fed) == []
    r = api.get(f"/api/v1/federations/{fid}/memberships", headers=world.admin)
    spent = {m["client_id"]: m["epsilon_spent"] for m in r.json()["data"]}
    assert spent == {world.a1.client_id: 0.0, world.b1.client_id: 5.0}
