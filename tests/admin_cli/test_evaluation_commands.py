"""Federated evaluation in the ``fedlora`` admin commands, against the real API over HTTP.

A causal-LM federation of two rounds: round 2's client scores round 1's adapter, the evaluation
pass scores round 2's (the final one, and here the best). ``federation watch`` shows the scores
per round and marks the best adapter and the evaluation pass; ``adapter list`` marks the best
and the latest; ``adapter download --best`` fetches the best one as a PEFT folder.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from api.db import Round
from api.queue import RecordingEnqueuer
from api.storage import ArtifactStore
from tests.admin_cli.test_commands import Cli, _client_call, _enroll, _login, _open_round
from tests.api.factories import SPEC, adapter_bytes, manifest_for
from tests.api.test_evaluations import _publish


@pytest.fixture
def cli(live_url: str, tmp_path: Path) -> Cli:
    return Cli(live_url, tmp_path / "home")


def _lease(c: Cli, key: str) -> str:
    r = _client_call(c.url, key, "GET", "/client/tasks/next")
    assert r.status_code == 200, r.text
    return str(r.json()["task_id"])


def _upload(c: Cli, key: str, task_id: str) -> None:
    body = adapter_bytes(2)
    r = _client_call(c.url, key, "POST", f"/client/tasks/{task_id}/uploads",
                     json=manifest_for(task_id, body),
                     headers={"Idempotency-Key": f"k-{task_id}"})  # fmt: skip
    assert r.status_code == 201, r.text
    r = _client_call(c.url, key, "PATCH", f"/client/uploads/{r.json()['upload_id']}",
                     content=body, headers={"Upload-Offset": "0"})  # fmt: skip
    assert r.json()["status"] == "accepted", r.text


def _score(c: Cli, key: str, task_id: str, sha: str, loss: float) -> None:
    body = {"adapter_sha256": sha, "num_examples": 20, "loss": loss}
    r = _client_call(c.url, key, "POST", f"/client/tasks/{task_id}/evaluation", json=body)
    assert r.status_code == 200, r.text


def test_watch_list_and_download_show_the_federated_evaluation(
    cli: Cli,
    app_sessions: sessionmaker[Session],
    store: ArtifactStore,
    enqueued: RecordingEnqueuer,
    tmp_path: Path,
) -> None:
    _login(cli)
    cli("org", "create", "acme")
    party = _enroll(cli.url, cli("join-token", "create", "acme").stdout.strip(), "acme-1")
    key = party["api_key"]
    fid = cli(
        "federation", "create", "--name", "lm", "--model-spec", "-", "--base-model-id", "m",
        "--global-rank", "4", "--rounds", "2", "--clients-per-round", "1", "--dp", "none",
        "--strategy", "fedavg", stdin=SPEC.model_dump_json(),
    ).stdout.strip()  # fmt: skip
    cli("federation", "add-member", "lm", "acme-1", "--rank-budget", "4")
    r = _client_call(cli.url, key, "PUT", f"/client/memberships/{fid}",
                     json={"fingerprint": SPEC.fingerprint})  # fmt: skip
    assert r.status_code == 200, r.text
    cli("federation", "start", "lm")

    rid = _open_round(app_sessions, store, fid)
    _upload(cli, key, _lease(cli, key))
    first = _publish(app_sessions, store, rid, enqueued, fill=0.1)
    task = _lease(cli, key)  # round 2 scores round 1's adapter, then trains
    _score(cli, key, task, first.sha256, loss=2.0)
    _upload(cli, key, task)
    with app_sessions() as s:
        rid2 = s.scalars(sa.select(Round.id).where(Round.federation_id == uuid.UUID(fid),
                                                   Round.number == 2)).one()  # fmt: skip
    final = _publish(app_sessions, store, rid2, enqueued, fill=0.2)
    _score(cli, key, _lease(cli, key), final.sha256, loss=1.0)  # the evaluation pass

    watch = cli("federation", "watch", "lm", "--once").stdout
    assert "2/2 rounds completed" in watch
    assert "federated perplexity" in watch
    assert "federated loss" in watch
    row1, row2, row3 = (
        next(line for line in watch.splitlines() if line.strip().startswith(f"{n} "))
        for n in (1, 2, 3)
    )
    assert f"{math.exp(2.0):.4g}" in row1
    assert "best adapter" not in row1
    assert f"{math.exp(1.0):.4g}" in row2
    assert "best adapter" in row2
    assert "evaluation pass" in row3

    listed = cli("adapter", "list", fid).stdout
    line2 = next(line for line in listed.splitlines() if line.strip().startswith("2 "))
    assert "best latest" in line2
    assert "loss=1 (1 clients)" in line2
    folder = tmp_path / "best"
    cli("adapter", "download", "lm", "--best", "--out", str(folder))
    assert (folder / "adapter_model.safetensors").read_bytes() == adapter_bytes(4, fill=0.2)
    assert "give --best or --round, not both" in cli.fails(
        "adapter", "download", "lm", "--best", "--round", "1"
    )
