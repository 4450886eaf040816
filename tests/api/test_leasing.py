"""50 clients, two pollers each, racing for their tasks: every task is leased exactly once."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from api.db import Client, Federation, Membership, Organization, Task
from api.services import client_tasks, rounds
from api.storage import ArtifactStore
from tests.api.factories import FINGERPRINT, SPEC, make_plan

CLIENTS = 50
POLLERS_PER_CLIENT = 2


def _setup(sessions: sessionmaker[Session], store: ArtifactStore) -> list[uuid.UUID]:
    plan = make_plan(store)
    with sessions() as s:
        org = Organization(name="racers")
        s.add(org)
        s.flush()
        clients = [
            Client(
                organization_id=org.id,
                name=f"c{i}",
                api_key_hash=f"{i:064x}",
                api_key_prefix="flk_",
                hardware={},
            )
            for i in range(CLIENTS)
        ]
        fed = Federation(
            name="race",
            base_model_id="tiny/bert",
            task_type="seq_cls",
            model_spec=SPEC.model_dump(mode="json"),
            target_modules=["query"],
            strategy="fedavg",
            strategy_params={},
            global_rank=4,
            num_rounds=1,
            clients_per_round=CLIENTS,
            min_clients=CLIENTS,
            round_deadline_seconds=3600,
            local_training={},
            dp=plan.dp.model_dump(mode="json", exclude={"planned_rounds"}),
            status="running",
        )
        s.add_all([*clients, fed])
        s.flush()
        s.add_all(
            Membership(federation_id=fed.id, client_id=c.id, rank_budget=4, fingerprint=FINGERPRINT)
            for c in clients
        )
        s.commit()
        todo = rounds.round_to_open(session=s, federation_id=fed.id)
        assert todo is not None
        assert len(todo.selected) == CLIENTS
        rid = rounds.open_round(
            session=s,
            federation_id=fed.id,
            number=1,
            plans={m.client_id: plan for m in todo.selected},
        )
        assert rid is not None
        return [c.id for c in clients]


def test_each_task_is_leased_exactly_once_under_a_race(
    session_factory: sessionmaker[Session], tmp_path: object
) -> None:
    store = ArtifactStore(str(tmp_path) + "/artifacts")
    client_ids = _setup(session_factory, store)
    pollers = [cid for cid in client_ids for _ in range(POLLERS_PER_CLIENT)]
    barrier = threading.Barrier(len(pollers))

    def poll(client_id: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID | None]:
        barrier.wait()
        with session_factory() as s:
            task = client_tasks.lease_next_task(session=s, client_id=client_id, lease_seconds=60)
            return client_id, task.id if task else None

    with ThreadPoolExecutor(max_workers=len(pollers)) as pool:
        results = list(pool.map(poll, pollers))

    won = [(cid, tid) for cid, tid in results if tid is not None]
    assert len(won) == CLIENTS  # every client got its task, once
    assert len({tid for _, tid in won}) == CLIENTS
    assert {cid for cid, _ in won} == set(client_ids)
    with session_factory() as s:
        rows = s.execute(sa.select(Task.client_id, Task.lease_owner, Task.lease_count)).all()
    assert len(rows) == CLIENTS
    for client_id, owner, count in rows:
        assert owner == client_id
        assert count == 1
