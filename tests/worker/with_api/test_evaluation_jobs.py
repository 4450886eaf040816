"""The worker plans federated evaluation: each round's plans name the latest published global
adapter (as stored, with its rank and scale from its adapter_config.json), and after the last
round an evaluation-only round names the final adapter. Jobs called directly, as in test_jobs.
"""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.db import Federation, GlobalAdapter, Round, Task
from api.storage import ArtifactStore
from fedlora_client.protocol import TrainingPlan
from tests.worker.with_api.test_jobs import (  # noqa: F401  (runtime is a fixture)
    _aggregating_round,
    _setup,
    _train_and_upload,
    runtime,
)
from worker import jobs


def _plans(
    sessions: sessionmaker[Session], fid: str, number: int
) -> tuple[str, list[TrainingPlan]]:
    with sessions() as s:
        rnd = s.scalars(
            sa.select(Round).where(Round.federation_id == uuid.UUID(fid), Round.number == number)
        ).one()
        plans = s.scalars(sa.select(Task.plan).where(Task.round_id == rnd.id)).all()
        return rnd.kind, [TrainingPlan.model_validate(p) for p in plans]


def _adapter(sessions: sessionmaker[Session], fid: str, number: int) -> GlobalAdapter:
    with sessions() as s:
        return s.scalars(
            sa.select(GlobalAdapter).where(
                GlobalAdapter.federation_id == uuid.UUID(fid), GlobalAdapter.round_number == number
            )
        ).one()


@pytest.mark.parametrize("strategy", ["fedavg", "flora"])  # flora: the global rank grows
def test_plans_name_the_published_adapter_and_an_evaluation_round_follows_the_last(
    strategy: str,
    api: TestClient,
    admin_headers: dict[str, str],
    runtime: jobs.Runtime,  # noqa: F811
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
) -> None:
    fid, parties = _setup(api, admin_headers, strategy)
    assert jobs.open_round(runtime, fid) is not None
    kind, plans = _plans(app_sessions, fid, 1)
    assert kind == "training"
    assert {p.global_adapter for p in plans} == {None}  # nothing published before round 1
    for number in (1, 2):
        for i, party in enumerate(parties):
            _train_and_upload(api, party, seed=i)
        assert jobs.aggregate_round(runtime, str(_aggregating_round(app_sessions, fid)))
        published = _adapter(app_sessions, fid, number)
        with store.open(published.adapter_config_sha256) as f:
            config = json.loads(f.read())
        kind, plans = _plans(app_sessions, fid, number + 1)
        assert kind == ("training" if number == 1 else "evaluation")
        assert len(plans) == len(parties)
        for plan in plans:
            ref = plan.global_adapter
            assert ref is not None
            assert ref.sha256 == published.adapter_sha256
            assert ref.size == store.size(published.adapter_sha256)
            assert (ref.lora.rank, ref.lora.lora_alpha) == (config["r"], config["lora_alpha"])
            assert plan.evaluate_only == (number == 2)
            if plan.evaluate_only:  # describes the final adapter; trains nothing
                assert plan.lora == ref.lora
    with app_sessions() as s:
        assert s.get_one(Federation, uuid.UUID(fid)).status == "completed"
    assert jobs.open_round(runtime, fid) is None  # nothing opens after the evaluation round
