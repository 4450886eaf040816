"""Federated evaluation in the SDK: the held-out split, and scoring the published global adapter.

* The evaluation split is ``eval_data`` when given, else a content-hashed share of the data
  file that is never trained on (the same rows every round, whatever their order).
* At the start of a task the SDK scores base + the *published* global adapter the plan names
  (rank 8 here), not the rank-2 truncation it then trains from; the reference is computed by
  merging ``s * B @ A`` into a plain transformers model by hand.
* An evaluation-only task is scored and reported, never trained or uploaded, and is not counted
  as a round; a client with nothing to evaluate on gives it back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedlora_client import FedloraClient, Participant, participate
from fedlora_client import protocol as p
from fedlora_client._credentials import Credentials
from fedlora_client._data import holdout_split
from fedlora_client._model import load_base_model, load_tokenizer
from fedlora_client._training import evaluate
from fedlora_client.calibration import margin_histogram
from tests.client_sdk.conftest import body, cls_records, lora_tensors, membership, method_task
from tests.client_sdk.fake_server import API_KEY, FakeServer

GLOBAL_RANK = 8


def _client(server: FakeServer, state: Path) -> FedloraClient:
    creds = Credentials("http://fedlora.test", "c1", "o1", API_KEY)
    return FedloraClient(creds, state_dir=state, transport=server.transport())


def records(n: int) -> list[dict[str, object]]:
    return [{"text": f"review {i}: {'loved it' if i % 3 else 'hated it'}", "label": int(i % 3 > 0)}
            for i in range(n)]  # fmt: skip


# ------------------------------------------------------------------------- the split


def test_holdout_is_by_content_capped_and_the_same_whatever_the_order() -> None:
    rows = records(400)
    kept, held = holdout_split(rows, 0.1, max_examples=1000, min_examples=5)
    assert sorted(kept + held) == list(range(400))
    assert 20 <= len(held) <= 60  # about 10%
    reordered = list(reversed(rows))
    _, held_again = holdout_split(reordered, 0.1, max_examples=1000, min_examples=5)
    assert {rows[i]["text"] for i in held} == {reordered[i]["text"] for i in held_again}
    grown = [*rows, *records(600)[400:]]  # appended rows move no earlier row across
    _, held_grown = holdout_split(grown, 0.1, max_examples=1000, min_examples=5)
    assert set(held) == {i for i in held_grown if i < 400}
    _, capped = holdout_split(rows, 0.1, max_examples=7, min_examples=5)
    assert len(capped) == 7
    assert set(capped) <= set(held)
    twins = [*rows, *(rows[i] for i in held[:3])]  # exact copies of held rows stay held out
    _, held_twins = holdout_split(twins, 0.1, max_examples=1000, min_examples=5)
    assert set(range(400, 403)) <= set(held_twins)
    assert holdout_split(records(10), 0.1, max_examples=1000, min_examples=5) == (
        list(range(10)), [],
    )  # fmt: skip


def test_the_held_out_rows_are_never_trained_on(minilm: Path, minilm_spec: p.ModelSpec,
                                                tmp_path: Path) -> None:  # fmt: skip
    data = records(300)
    server = FakeServer(memberships=[membership(minilm_spec, p.TaskType.SEQ_CLS)])
    task = method_task(server, minilm_spec, p.TaskType.SEQ_CLS, "fedavg", steps=1)
    server.tasks.append(task)
    with _client(server, tmp_path) as client:
        participant = Participant(client, minilm, data, progress=False, noise_seed=0)
        split = participant.holdout()
        assert split is not None
        kept, held = split
        train = participant.encoded_data(task.plan)
        evaluation = participant.evaluation_data(task.plan)
        assert evaluation is not None
        tokenizer = load_tokenizer(minilm)
        trained = {tuple(ids) for ids in train.input_ids}
        for i in held:
            text = str(data[i]["text"])
            ids = tokenizer(text, truncation=True, max_length=task.plan.training.max_seq_len)
            ids = ids["input_ids"]
            assert tuple(ids) not in trained, f"held-out row {i} is in the training data"
        assert (len(train), len(evaluation)) == (len(kept), len(held))
        assert participate(participant, wait=0, stop_when_idle=True) == 1
    manifest = next(iter(server.uploads.values())).manifest
    assert manifest.num_examples == len(kept)  # the aggregation weight counts trained rows
    assert task.task_id not in server.evaluations  # round 1: no global adapter to score yet


# ------------------------------------------------------------------------- scoring


def _merged(minilm: Path, spec: p.ModelSpec, tensors: dict[str, torch.Tensor],
            rank: int, scaling: float) -> torch.nn.Module:  # fmt: skip
    """Reference: base weights + s * B[:, :rank] @ A[:rank] and the head, with no PEFT."""
    model = load_base_model(minilm, p.TaskType.SEQ_CLS, num_labels=2)
    with torch.no_grad():
        for module in spec.modules:
            a, b = tensors[p.lora_a_key(module)][:rank], tensors[p.lora_b_key(module)][:, :rank]
            model.get_submodule(module).weight += scaling * b @ a
        for key in spec.extra_trainable:
            name = key.removeprefix(p.PEFT_PREFIX)
            model.get_parameter(name).copy_(tensors[key])
    return model


def _global_task(
    server: FakeServer, spec: p.ModelSpec, **update: object
) -> tuple[p.TaskAssignment, dict[str, torch.Tensor]]:
    """A round-2 task that trains rank 2 from the truncation of the published rank-8 adapter
    (returned too): HetLoRA's plan shape."""
    published = lora_tensors(spec, GLOBAL_RANK, seed=11, zero_b=False)
    for key in published:  # large enough that the rank-2 truncation scores otherwise
        published[key] *= 1.0 if "lora_A" in key else 40.0
    ref = server.add_artifact(body(published), p.LoraSpec(rank=GLOBAL_RANK, lora_alpha=16))
    task = method_task(server, spec, p.TaskType.SEQ_CLS, "hetlora", steps=1)
    plan = task.plan.model_copy(update={"global_adapter": ref, **update})
    return task.model_copy(update={"plan": plan, "round_number": 2}), published


def test_the_sdk_scores_the_published_adapter_not_its_truncated_start(
    minilm: Path, minilm_spec: p.ModelSpec, tmp_path: Path
) -> None:
    server = FakeServer(memberships=[membership(minilm_spec, p.TaskType.SEQ_CLS)])
    task, published = _global_task(server, minilm_spec)
    assert task.plan.lora.rank == 2 < GLOBAL_RANK
    server.tasks.append(task)
    eval_rows = records(40)
    events: list[tuple[str, dict[str, object]]] = []
    with _client(server, tmp_path) as client:
        participant = Participant(client, minilm, records(30), progress=False, noise_seed=0,
                                  eval_data=eval_rows)  # fmt: skip
        done = participate(participant, wait=0, stop_when_idle=True,
                           on_event=lambda k, i: events.append((k, i)))  # fmt: skip
        data = participant.evaluation_data(task.plan)
    assert done == 1
    got = server.evaluations[task.task_id]
    assert got.adapter_sha256 == task.plan.global_adapter.sha256  # type: ignore[union-attr]
    assert got.num_examples == len(eval_rows)
    assert data is not None
    want = evaluate(_merged(minilm, minilm_spec, published, GLOBAL_RANK, 16 / 8), data)
    assert got.loss == pytest.approx(want["eval_loss"], rel=1e-4)
    assert got.accuracy == pytest.approx(want["eval_accuracy"])
    # and how its margins fall, per label, for the server's threshold calibration
    margins: list[float] = []
    evaluate(_merged(minilm, minilm_spec, published, GLOBAL_RANK, 16 / 8), data, margins=margins)
    labels = [int(t) for t in data.targets]  # type: ignore[arg-type]
    reference = margin_histogram(margins, labels)
    assert got.margin_histogram is not None
    assert [sum(row) for row in got.margin_histogram] == [labels.count(0), labels.count(1)]
    moved = sum(abs(a - b) for ra, rb in zip(got.margin_histogram, reference, strict=True)
                for a, b in zip(ra, rb, strict=True))  # fmt: skip
    assert moved <= 2  # float rounding may put a row on the other side of one bin edge
    start = evaluate(_merged(minilm, minilm_spec, published, 2, 16 / 8), data)
    assert abs(start["eval_loss"] - got.loss) > 0.05, "the test must tell the two apart"
    kinds = [k for k, _ in events]
    assert kinds.index("evaluated") < kinds.index("trained")  # scored before training
    assert task.task_id in server.accepted  # and the round's training went on


def test_an_evaluation_only_task_is_scored_never_trained_and_not_counted(
    minilm: Path, minilm_spec: p.ModelSpec, tmp_path: Path
) -> None:
    server = FakeServer(memberships=[membership(minilm_spec, p.TaskType.SEQ_CLS)])
    final, _ = _global_task(server, minilm_spec, evaluate_only=True)
    server.tasks.append(final)
    with _client(server, tmp_path) as client:
        participant = Participant(client, minilm, records(200), progress=False)
        assert participate(participant, wait=0, stop_when_idle=True) == 0
    assert server.evaluations[final.task_id].num_examples >= 5  # the held-out rows
    assert server.uploads == {}
    assert final.task_id not in server.released


def test_nothing_to_evaluate_on_gives_the_evaluation_task_back(
    minilm: Path, minilm_spec: p.ModelSpec, tmp_path: Path
) -> None:
    server = FakeServer(memberships=[membership(minilm_spec, p.TaskType.SEQ_CLS)])
    final, _ = _global_task(server, minilm_spec, evaluate_only=True)
    server.tasks.append(final)
    with _client(server, tmp_path) as client:  # 12 rows hold out nothing
        participant = Participant(client, minilm, cls_records(12), progress=False)
        assert participate(participant, wait=0, stop_when_idle=True) == 0
    assert final.task_id not in server.evaluations
    assert "no evaluation data" in server.released[final.task_id]
