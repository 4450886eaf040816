"""Federated evaluation on the server: clients' scores of global adapters, through the API.

Round N's tasks name round N-1's adapter; their clients post a GlobalEvaluation. The API
aggregates them per adapter, weighted by example counts, marks the best and the latest adapter,
and, after the last round, an evaluation-only round scores the final adapter.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.db import Round, RoundKind, Task, utcnow
from api.queue import RecordingEnqueuer
from api.services import evaluations, rounds
from api.services.evaluations import Score
from api.storage import ArtifactStore
from fedlora_client.calibration import margin_histogram
from fedlora_client.protocol import ArtifactRef, LoraSpec, TaskType, TrainingPlan
from tests.api.factories import adapter_bytes, make_plan
from tests.api.test_rounds import _lease, _upload
from tests.api.world import World, build_world, open_next_round, start

V1 = "/api/v1"


@pytest.fixture
def world(api: TestClient, admin_headers: dict[str, str]) -> World:
    w = build_world(api, admin_headers, min_clients=1, clients_per_round=2, num_rounds=3)
    start(api, w)
    return w


def _plans(
    store: ArtifactStore, members: list[uuid.UUID], ref: ArtifactRef | None, *, only: bool = False
) -> dict[uuid.UUID, TrainingPlan]:
    return {
        m: make_plan(store, seed=i).model_copy(
            update={"global_adapter": ref, "evaluate_only": only}
        )
        for i, m in enumerate(members)
    }


def _publish(
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    rid: uuid.UUID,
    enqueued: RecordingEnqueuer,
    fill: float,
) -> ArtifactRef:
    """What the worker's aggregate job does: publish a distinct adapter, plan what comes next
    (the next round, or the evaluation pass after the last one) naming that adapter."""
    data = adapter_bytes(4, fill=fill)
    adapter = store.put_bytes(data)
    config = store.put_bytes(json.dumps({"r": 4, "lora_alpha": 8}).encode())
    ref = ArtifactRef(sha256=adapter.sha256, size=len(data), lora=LoraSpec(rank=4, lora_alpha=8))
    with sessions() as s:
        assert rounds.claim_aggregation(session=s, round_id=rid, worker_id="w", seconds=60)
        inputs = rounds.aggregation_inputs(session=s, round_id=rid)
        assert inputs is not None
        fid = inputs.federation.federation_id
        nxt = rounds.round_to_open(session=s, federation_id=fid, after_round_id=rid)
        kind, only = RoundKind.TRAINING, False
        if nxt is None:
            nxt = rounds.evaluation_to_open(session=s, federation_id=fid, after_round_id=rid)
            kind, only = RoundKind.EVALUATION, True
        assert nxt is not None
        members = [m.client_id for m in nxt.selected]
        assert rounds.publish_round(
            session=s,
            round_id=rid,
            adapter_sha256=adapter.sha256,
            adapter_config_sha256=config.sha256,
            update_ids=[u.update_id for u in inputs.updates],
            next_number=nxt.number,
            next_plans=_plans(store, members, ref, only=only),
            next_kind=kind,
            enqueue=enqueued,
        )
    return ref


def _train_round(api: TestClient, world: World) -> dict[str, str]:
    """Both members lease and upload; returns their task ids by client id."""
    tasks = {}
    for party in (world.a1, world.b1):
        tasks[party.client_id] = task_id = _lease(api, party.headers)
        _upload(api, party.headers, task_id)
    return tasks


def _evaluate(
    api: TestClient, headers: dict[str, str], task_id: str, sha: str, n: int, loss: float,
    accuracy: float | None, counts: list[list[int]] | None = None,
) -> int:  # fmt: skip
    body = {"adapter_sha256": sha, "num_examples": n, "loss": loss, "accuracy": accuracy,
            "margin_histogram": counts}  # fmt: skip
    r = api.post(f"{V1}/client/tasks/{task_id}/evaluation", json=body, headers=headers)
    return r.status_code


def _round_id(sessions: sessionmaker[Session], fid: str, number: int) -> uuid.UUID:
    with sessions() as s:
        return s.scalars(
            sa.select(Round.id).where(Round.federation_id == uuid.UUID(fid), Round.number == number)
        ).one()


def test_clients_score_the_previous_adapter_example_weighted_and_the_best_is_marked(
    api: TestClient,
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
) -> None:
    fid, admin = world.federation_id, world.admin
    rid1 = open_next_round(app_sessions, store, fid)
    _train_round(api, world)
    first = _publish(app_sessions, store, rid1, enqueued, fill=0.01)

    # round 2: each client scores round 1's adapter before it trains
    a1, b1 = world.a1, world.b1
    task_a = _lease(api, a1.headers)
    r = api.get(f"{V1}/client/tasks/{task_a}/global-adapter", headers=a1.headers)
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == first.sha256
    assert _evaluate(api, a1.headers, task_a, first.sha256, 10, 1.0, 0.5) == 200
    task_b = _lease(api, b1.headers)
    assert _evaluate(api, b1.headers, task_b, first.sha256, 30, 0.2, 0.9) == 200
    adapters = api.get(f"{V1}/federations/{fid}/adapters", headers=admin).json()["data"]
    (only,) = adapters
    assert only["evaluation"] == {
        "loss": pytest.approx((10 * 1.0 + 30 * 0.2) / 40),
        "accuracy": pytest.approx((10 * 0.5 + 30 * 0.9) / 40),
        "perplexity": None,  # classification
        "num_examples": 40,
        "num_clients": 2,
    }
    assert (only["is_best"], only["is_latest"]) == (True, True)
    # a client's second report of the same adapter replaces its first
    assert _evaluate(api, a1.headers, task_a, first.sha256, 10, 0.0, 1.0) == 200
    score = api.get(f"{V1}/adapters/{only['id']}", headers=admin).json()["evaluation"]
    assert score["accuracy"] == pytest.approx((10 * 1.0 + 30 * 0.9) / 40)
    assert score["num_clients"] == 2
    for party, task_id in ((a1, task_a), (b1, task_b)):
        _upload(api, party.headers, task_id)
    second = _publish(app_sessions, store, _round_id(app_sessions, fid, 2), enqueued, fill=0.02)

    # round 3 scores round 2's adapter lower: the best stays round 1's, the latest is round 2's
    task_a = _lease(api, a1.headers)
    assert _evaluate(api, a1.headers, task_a, second.sha256, 20, 0.3, 0.7) == 200
    listed = api.get(f"{V1}/federations/{fid}/rounds", headers=admin).json()["data"]
    assert [(r["number"], r["kind"], r["best"]) for r in listed] == [
        (1, "training", True), (2, "training", False), (3, "training", False),
    ]  # fmt: skip
    assert listed[1]["evaluation"]["accuracy"] == pytest.approx(0.7)
    assert listed[2]["evaluation"] is None  # round 3 has published nothing yet
    best = api.get(f"{V1}/federations/{fid}/adapters/best", headers=admin).json()
    latest = api.get(f"{V1}/federations/{fid}/adapters/latest", headers=admin).json()
    assert (best["round_number"], best["is_best"]) == (1, True)
    assert (latest["round_number"], latest["is_latest"], latest["is_best"]) == (2, True, False)


def test_margin_counts_are_stored_and_handed_to_the_next_aggregation(
    api: TestClient,
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
) -> None:
    """The worker calibrates round N's threshold from the counts of round N-1's adapter."""
    fid = world.federation_id
    rid1 = open_next_round(app_sessions, store, fid)
    _train_round(api, world)
    first = _publish(app_sessions, store, rid1, enqueued, fill=0.01)
    a1, b1 = world.a1, world.b1
    counts_a = margin_histogram([-0.5, -0.4, 0.3], [0, 1, 1])
    counts_b = margin_histogram([-0.2, -0.1], [0, 0])
    task_a, task_b = _lease(api, a1.headers), _lease(api, b1.headers)
    assert _evaluate(api, a1.headers, task_a, first.sha256, 3, 0.5, 0.5, counts_a) == 200
    assert _evaluate(api, b1.headers, task_b, first.sha256, 2, 0.5, 0.5, counts_b) == 200
    # counts that do not add up to num_examples are refused, and the stored ones are kept
    body = {"adapter_sha256": first.sha256, "num_examples": 7, "loss": 0.5,
            "margin_histogram": counts_b}  # fmt: skip
    r = api.post(f"{V1}/client/tasks/{task_b}/evaluation", json=body, headers=b1.headers)
    assert r.status_code == 422
    assert "counts 2 rows but num_examples is 7" in r.text
    for party, task_id in ((a1, task_a), (b1, task_b)):
        _upload(api, party.headers, task_id)
    rid2 = _round_id(app_sessions, fid, 2)
    with app_sessions() as s:
        assert rounds.claim_aggregation(session=s, round_id=rid2, worker_id="w", seconds=60)
        inputs = rounds.aggregation_inputs(session=s, round_id=rid2)
    assert inputs is not None
    assert inputs.previous is not None
    assert inputs.previous.adapter_sha256 == first.sha256
    assert sorted(inputs.margin_histograms) == sorted([counts_a, counts_b])


def test_an_evaluation_must_name_the_tasks_adapter_and_be_sent_while_held(
    api: TestClient,
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
) -> None:
    fid = world.federation_id
    rid1 = open_next_round(app_sessions, store, fid)
    a1, b1 = world.a1, world.b1
    task_a = _lease(api, a1.headers)
    r = api.post(f"{V1}/client/tasks/{task_a}/evaluation", headers=a1.headers,
                 json={"adapter_sha256": "a" * 64, "num_examples": 5, "loss": 0.5})  # fmt: skip
    assert r.status_code == 409
    assert "names no global adapter" in r.json()["detail"]  # round 1: nothing published yet
    assert (
        api.get(f"{V1}/client/tasks/{task_a}/global-adapter", headers=a1.headers).status_code == 404
    )
    _upload(api, a1.headers, task_a)
    _upload(api, b1.headers, _lease(api, b1.headers))
    first = _publish(app_sessions, store, rid1, enqueued, fill=0.01)

    task_a = _lease(api, a1.headers)
    assert _evaluate(api, a1.headers, task_a, "b" * 64, 5, 0.5, None) == 422
    r = api.post(f"{V1}/client/tasks/{task_a}/evaluation", headers=a1.headers,
                 json={"adapter_sha256": "b" * 64, "num_examples": 5, "loss": 0.5})  # fmt: skip
    assert "is not the adapter task" in r.json()["detail"]
    assert _evaluate(api, b1.headers, task_a, first.sha256, 5, 0.5, None) == 404  # not b1's
    bad = {"adapter_sha256": first.sha256, "num_examples": 5, "loss": -1.0}
    assert api.post(f"{V1}/client/tasks/{task_a}/evaluation", headers=a1.headers,
                    json=bad).status_code == 422  # fmt: skip
    task_b = _lease(api, b1.headers)
    r = api.post(f"{V1}/client/tasks/{task_b}/release", headers=b1.headers,
                 json={"reason": "cannot train"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert _evaluate(api, b1.headers, task_b, first.sha256, 5, 0.5, None) == 409  # not held
    assert _evaluate(api, a1.headers, task_a, first.sha256, 5, 0.5, None) == 200


def test_after_the_last_round_an_evaluation_pass_scores_the_final_adapter(
    api: TestClient,
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
) -> None:
    fid, admin, a1, b1 = world.federation_id, world.admin, world.a1, world.b1
    rid = open_next_round(app_sessions, store, fid)
    for number in (1, 2, 3):
        _train_round(api, world)
        final = _publish(app_sessions, store, rid, enqueued, fill=0.01 * number)
        if number < 3:
            rid = _round_id(app_sessions, fid, number + 1)
    fed = api.get(f"{V1}/federations/{fid}", headers=admin).json()
    assert (fed["status"], fed["rounds_completed"], fed["rounds_failed"]) == ("completed", 3, 0)
    evaluation = api.get(f"{V1}/federations/{fid}/rounds", headers=admin).json()["data"][-1]
    assert (evaluation["number"], evaluation["kind"], evaluation["state"]) == (
        4, "evaluation", "open",
    )  # fmt: skip
    enqueued.jobs.clear()

    # the federation is completed, yet its members take the evaluation tasks
    task_a = _lease(api, a1.headers)
    r = api.get(f"{V1}/client/tasks/{task_a}", headers=a1.headers)
    assert r.json()["plan"]["evaluate_only"] is True
    assert r.json()["plan"]["global_adapter"]["sha256"] == final.sha256
    assert _evaluate(api, a1.headers, task_a, final.sha256, 12, 0.25, 0.75) == 200
    with app_sessions() as s:
        assert s.get_one(Task, uuid.UUID(task_a)).status == "reported"
    assert _state(api, admin, fid, 4) == "open"  # b1's task is outstanding
    task_b = _lease(api, b1.headers)
    r = api.post(f"{V1}/client/tasks/{task_b}/release", headers=b1.headers,
                 json={"reason": "no evaluation data"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert _state(api, admin, fid, 4) == "completed"
    assert enqueued.jobs == []  # nothing follows an evaluation round
    adapters = api.get(f"{V1}/federations/{fid}/adapters", headers=admin).json()["data"]
    last = adapters[-1]
    assert (last["round_number"], last["is_latest"]) == (3, True)
    assert last["evaluation"]["num_clients"] == 1
    assert last["evaluation"]["accuracy"] == pytest.approx(0.75)
    fed = api.get(f"{V1}/federations/{fid}", headers=admin).json()
    assert (fed["status"], fed["rounds_completed"]) == ("completed", 3)  # the pass is no round


def test_an_evaluation_pass_nobody_answers_fails_at_its_deadline_and_nothing_follows(
    api: TestClient,
    world: World,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
) -> None:
    fid = world.federation_id
    rid = open_next_round(app_sessions, store, fid)
    for number in (1, 2, 3):
        _train_round(api, world)
        _publish(app_sessions, store, rid, enqueued, fill=0.01 * number)
        if number < 3:
            rid = _round_id(app_sessions, fid, number + 1)
    enqueued.jobs.clear()
    with app_sessions() as s:
        result = rounds.sweep(session=s, now=utcnow() + timedelta(hours=1), enqueue=enqueued)
    assert len(result.rounds_failed) == 1
    evaluation = api.get(f"{V1}/federations/{fid}/rounds", headers=world.admin).json()["data"][-1]
    assert (evaluation["kind"], evaluation["state"]) == ("evaluation", "failed")
    assert "no member evaluated the final adapter" in evaluation["failure_reason"]
    assert enqueued.jobs == []
    fed = api.get(f"{V1}/federations/{fid}", headers=world.admin).json()
    assert (fed["status"], fed["rounds_completed"], fed["rounds_failed"]) == ("completed", 3, 0)


def _state(api: TestClient, admin: dict[str, str], fid: str, number: int) -> str:
    listed = api.get(f"{V1}/federations/{fid}/rounds", headers=admin).json()["data"]
    return str(next(r["state"] for r in listed if r["number"] == number))


def _score(adapter: int, loss: float, accuracy: float | None) -> Score:
    return Score(uuid.UUID(int=adapter), 10, 1, loss, accuracy)


def test_the_best_adapter_by_accuracy_then_loss_or_by_loss_for_causal_lm() -> None:
    a, b, c = _score(1, 0.5, 0.8), _score(2, 0.4, 0.8), _score(3, 0.3, 0.7)
    cls = [(a, 1), (b, 2), (c, 3)]
    assert evaluations.best_adapter(cls, TaskType.SEQ_CLS) == b.adapter_id  # tie: lower loss
    assert evaluations.best_adapter(cls, TaskType.CAUSAL_LM) == c.adapter_id  # lowest loss
    same = [(_score(1, 0.5, None), 1), (_score(2, 0.5, None), 2)]
    assert evaluations.best_adapter(same, TaskType.CAUSAL_LM) == uuid.UUID(int=2)  # the later
    assert evaluations.best_adapter([], TaskType.SEQ_CLS) is None
