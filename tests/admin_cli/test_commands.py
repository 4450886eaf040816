"""Every ``fedlora`` admin command against the real API over HTTP (SQLite and Postgres).

Rounds are opened and published the way the worker's jobs do it (``api.services.rounds``); the
client's side goes through the client routes. The commands run in-process (typer's CliRunner)
with their config file in a temporary directory.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

from api.db import GlobalAdapter
from api.services import rounds
from api.storage import ArtifactStore
from fedlora.admin_client import AdminClient
from fedlora.cli import app
from tests.api.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.api.factories import SPEC, adapter_bytes, make_plan, manifest_for
from worker.strategies.params import RECOMMENDED_STRATEGY

ROOT = Path(__file__).resolve().parents[2]


class Cli:
    def __init__(self, url: str, home: Path) -> None:
        self.url = url
        self.env = {
            "FEDLORA_ADMIN_CONFIG": str(home / "fedlora" / "admin.json"),
            "FEDLORA_URL": "",
            "FEDLORA_TOKEN": "",
            "FEDLORA_ADMIN_EMAIL": "",
            "FEDLORA_ADMIN_PASSWORD": "",
            "COLUMNS": "250",
        }

    def __call__(self, *args: str, ok: bool = True, stdin: str | None = None,
                 env: dict[str, str] | None = None) -> Result:  # fmt: skip
        result = CliRunner().invoke(app, list(args), input=stdin, env={**self.env, **(env or {})})
        if ok:
            assert result.exit_code == 0, (args, result.output, result.exception)
        return result

    def fails(self, *args: str, stdin: str | None = None) -> str:
        """The command exits 1 with one error line and no traceback; returns its stderr."""
        result = self(*args, ok=False, stdin=stdin)
        assert result.exit_code == 1, (args, result.output, result.exception)
        assert isinstance(result.exception, SystemExit)  # handled, not a crash
        assert "Traceback" not in result.output
        assert result.stderr.startswith("error ")
        return " ".join(result.stderr.split())


@pytest.fixture
def cli(live_url: str, tmp_path: Path) -> Cli:
    return Cli(live_url, tmp_path / "home")


def _login(cli: Cli) -> None:
    cli("login", "--url", cli.url, "--email", ADMIN_EMAIL, "--password", ADMIN_PASSWORD)


def _enroll(url: str, token: str, name: str) -> dict[str, str]:
    r = httpx.post(f"{url}/api/v1/enroll", json={"join_token": token, "name": name}, timeout=60)
    assert r.status_code == 201, r.text
    body: dict[str, str] = r.json()
    return body


def _client_call(url: str, key: str, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
    return httpx.request(method, f"{url}/api/v1{path}", headers=headers, timeout=60, **kw)


def _open_round(sessions: sessionmaker[Session], store: ArtifactStore, fid: str) -> uuid.UUID:
    """What the worker's open_round job does (FedAvg plans with real start artifacts)."""
    with sessions() as session:
        todo = rounds.round_to_open(session=session, federation_id=uuid.UUID(fid))
        assert todo is not None
        plans = {m.client_id: make_plan(store) for m in todo.selected}
        rid = rounds.open_round(session=session, federation_id=uuid.UUID(fid),
                                number=todo.number, plans=plans)  # fmt: skip
    assert rid is not None
    return rid


def _publish(sessions: sessionmaker[Session], store: ArtifactStore, rid: uuid.UUID) -> bytes:
    """What the worker's aggregate_round job does; returns the adapter's weights."""
    weights = adapter_bytes(4, fill=0.25)
    with sessions() as session:
        assert rounds.claim_aggregation(session=session, round_id=rid, worker_id="w", seconds=60)
        inputs = rounds.aggregation_inputs(session=session, round_id=rid)
        assert inputs is not None
        assert rounds.publish_round(
            session=session, round_id=rid, adapter_sha256=store.put_bytes(weights).sha256,
            adapter_config_sha256=store.put_bytes(b'{"r": 4, "peft_type": "LORA"}').sha256,
            update_ids=[u.update_id for u in inputs.updates], metrics={"eval_accuracy": 0.75},
        )  # fmt: skip
    return weights


def test_an_admin_runs_a_federation_from_the_terminal(
    cli: Cli, app_sessions: sessionmaker[Session], store: ArtifactStore, tmp_path: Path
) -> None:
    # log in: the token (not the password) lands in a file only its owner can read
    refused = cli.fails("login", "--url", cli.url, "--email", ADMIN_EMAIL, "--password", "wrong")
    assert "the server answered 401" in refused
    _login(cli)
    config = Path(cli.env["FEDLORA_ADMIN_CONFIG"])
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    saved = json.loads(config.read_text())
    assert saved["url"] == cli.url
    assert saved["token"]
    assert ADMIN_PASSWORD not in config.read_text()

    org_id = cli("org", "create", "acme").stdout.strip()
    assert uuid.UUID(org_id)
    assert "acme" in cli("org", "list").stdout
    token = cli("join-token", "create", "acme", "--note", "for acme's ops").stdout.strip()
    party = _enroll(cli.url, token, "acme-gpu-1")
    assert "acme-gpu-1" in cli("client", "list", "--org", "acme").stdout

    # inspect's output, as pasted into a terminal with the command line above it
    pasted = (
        f"$ fedlora-client inspect ./model --task causal_lm\n{SPEC.model_dump_json(indent=2)}\n"
    )
    fid = cli(
        "federation", "create", "--name", "sst2", "--model-spec", "-", "--base-model-id",
        "tiny/bert", "--global-rank", "4", "--rounds", "2",
        "--clients-per-round", "1", "--dp", "client", "--noise-multiplier", "0.5",
        "--epsilon-budget", "20", "--training", "steps=3", "--strategy", "fedavg",
        stdin=pasted,
    ).stdout.strip()  # fmt: skip
    fed = _client_call(cli.url, party["api_key"], "GET", "/client/memberships").json()
    assert fed == []  # not a member yet
    added = cli("federation", "add-member", "sst2", "acme-gpu-1", "--rank-budget", "4",
                "--max-examples", "100")  # fmt: skip
    assert "at most 100 examples" in added.stderr
    members = cli("federation", "members", fid).stdout
    assert "acme-gpu-1" in members
    assert " 4 " in members

    # the client reports its model; the admin starts, pauses and resumes
    r = _client_call(cli.url, party["api_key"], "PUT", f"/client/memberships/{fid}",
                     json={"fingerprint": SPEC.fingerprint})  # fmt: skip
    assert r.status_code == 200, r.text
    assert "is running" in cli("federation", "start", "sst2").stderr
    assert "is paused" in cli("federation", "pause", fid).stderr
    assert "is running" in cli("federation", "resume", fid).stderr
    listing = cli("federation", "list", "--status", "running").stdout
    assert fid in listing
    assert "fedavg" in listing

    # round 1: the client never turns up; the admin releases its task, the round moves on
    rid1 = _open_round(app_sessions, store, fid)
    tasks = cli("task", "list", "sst2", "--round", "1").stdout
    (task1,) = [w for w in tasks.split() if _is_uuid(w)]
    assert "pending" in tasks
    released = cli("task", "release", task1, "--reason", "acme's machine is down")
    assert "acme's machine is down" in released.stderr
    assert "every task ended with 0 update(s)" in cli("federation", "watch", fid, "--once").stdout
    again = cli.fails("task", "release", task1)  # already released: the API's 409, one line
    assert "is released: only a pending or leased task can be released" in again

    # round 2: the client trains and uploads; the worker publishes the global adapter
    rid2 = _open_round(app_sessions, store, fid)
    assert rid2 != rid1
    lease = _client_call(cli.url, party["api_key"], "GET", "/client/tasks/next").json()
    body = adapter_bytes(2)
    manifest = manifest_for(lease["task_id"], body, eps=1.5)
    manifest["metrics"] = {"train_loss": 0.42, "eval_accuracy": 0.7}
    r = _client_call(cli.url, party["api_key"], "POST", f"/client/tasks/{lease['task_id']}/uploads",
                     json=manifest, headers={"Idempotency-Key": "admin-cli-1"})  # fmt: skip
    assert r.status_code == 201, r.text
    r = _client_call(cli.url, party["api_key"], "PATCH", f"/client/uploads/{r.json()['upload_id']}",
                     content=body, headers={"Upload-Offset": "0"})  # fmt: skip
    assert r.json()["status"] == "accepted", r.text
    weights = _publish(app_sessions, store, rid2)

    watch = cli("federation", "watch", "sst2", "--once").stdout
    row2 = next(line for line in watch.splitlines() if line.strip().startswith("2 "))
    assert "completed" in row2
    assert "1/1 uploaded" in row2
    assert "0.42" in row2
    assert "1.5" in row2
    assert "0.75" in row2
    assert "0.7" in row2
    assert "global eval_accuracy" in watch
    assert "local eval_accuracy" in watch
    assert "acme-gpu-1's task" in watch
    assert "released by admin: acme's machine is down" in watch

    # adapters: list, download the final one as a PEFT folder, a missing round is an error
    assert "eval_accuracy=0.75" in cli("adapter", "list", fid).stdout
    folder = tmp_path / "final"
    cli("adapter", "download", "sst2", "--out", str(folder))
    assert (folder / "adapter_model.safetensors").read_bytes() == weights
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 4
    assert "round 1 has no adapter; rounds with one: 2" in cli.fails(
        "adapter", "download", fid, "--round", "1"
    )

    # stop for good; a finished federation cannot start again (the API's 409, in one line)
    with app_sessions() as session:
        assert session.query(GlobalAdapter).count() == 1
    assert "is cancelled" in cli("federation", "cancel", fid).stderr
    message = cli.fails("federation", "start", fid)
    assert "the server answered 409" in message
    assert "cannot start" in message
    cli("logout")
    assert not config.exists()
    assert "not logged in: run `fedlora login" in cli.fails("federation", "list")


def _is_uuid(word: str) -> bool:
    try:
        uuid.UUID(word)
    except ValueError:
        return False
    return True


@pytest.fixture
def offline(tmp_path: Path) -> Cli:
    """The commands with no server behind the URL (checks that come before any request)."""
    cli = Cli("http://127.0.0.1:9", tmp_path / "home")
    cli.env.update({"FEDLORA_URL": cli.url, "FEDLORA_TOKEN": "not-checked-before-the-request"})
    return cli


def _create(*extra: str, spec: str = "-") -> list[str]:
    return ["federation", "create", "--name", "f", "--model-spec", spec, "--base-model-id", "m",
            "--global-rank", "4", "--rounds", "2", "--clients-per-round", "1", *extra]  # fmt: skip


def test_federation_create_names_what_to_fix_in_the_model_spec_and_options(
    offline: Cli, tmp_path: Path
) -> None:
    good = SPEC.model_dump_json()
    assert "not the JSON `fedlora-client inspect" in offline.fails(
        *_create("--dp", "none"), stdin='{"fingerprint": "ab", "modules": {'
    )
    bad_shape = json.dumps({**SPEC.model_dump(mode="json"), "modules": {"q": [8]}})
    assert "not a valid model spec (modules.q" in offline.fails(
        *_create("--dp", "none"), stdin=bad_shape
    )
    missing = offline.fails(*_create("--dp", "none", spec=str(tmp_path / "spec.json")))
    assert f"--model-spec {tmp_path / 'spec.json'}: no such file" in missing
    no_head = offline.fails(*_create("--dp", "none", "--task-type", "seq_cls"), stdin=good)
    assert "lists no classification head" in no_head
    head = SPEC.model_copy(
        update={"extra_trainable": {"base_model.model.classifier.weight": [2, 8]}}
    )
    assert "inspect again with --task causal_lm" in offline.fails(
        *_create("--dp", "none", "--task-type", "causal_lm"), stdin=head.model_dump_json()
    )
    assert "--dp is required" in offline.fails(*_create(), stdin=good)
    assert "needs exactly one of --target-epsilon" in offline.fails(
        *_create("--dp", "sample"), stdin=good
    )
    assert "--dp none takes no --target-epsilon" in offline.fails(
        *_create("--dp", "none", "--target-epsilon", "8"), stdin=good
    )
    assert "write KEY=VALUE" in offline.fails(
        *_create("--dp", "none", "--training", "steps"), stdin=good
    )
    short = ["federation", "create", "--model-spec", "-", "--dp", "none"]
    assert "missing --name, --base-model-id, --global-rank, --rounds, --clients-per-round" in (
        offline.fails(*short, stdin=good)
    )

    # a whole federation body pasted (its "model" is the spec) works too; --dry-run shows it
    body = {"model": SPEC.model_dump(mode="json"), "name": "from-body"}
    shown = offline(*_create("--dp", "sample", "--target-epsilon", "8", "--dry-run",
                             "--training", "steps=30", "--strategy-param", "mode=\"x\""),
                    stdin=json.dumps(body)).stdout  # fmt: skip
    request = json.loads(shown)
    assert request["model"] == SPEC.model_dump(mode="json")
    assert request["task_type"] == "causal_lm"  # no head in the spec
    assert request["target_modules"] == ["query", "value"]  # the spec's module names
    assert request["min_clients"] == 1
    assert request["training"] == {"steps": 30}
    assert request["dp"] == {"mode": "sample", "target_epsilon": 8.0}
    assert request["strategy_params"] == {"mode": "x"}


def test_the_real_inspect_output_creates_a_federation(
    cli: Cli, tiny_llama: Path, tmp_path: Path
) -> None:
    from fedlora_client.cli import app as client_app

    printed = CliRunner().invoke(
        client_app, ["inspect", str(tiny_llama), "--task", "causal_lm", "--target", "q_proj",
                     "--target", "v_proj"],
    )  # fmt: skip
    assert printed.exit_code == 0, printed.output
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(printed.stdout)
    _login(cli)
    fid = cli(*_create("--dp", "none", spec=str(spec_file))).stdout.strip()
    with httpx.Client(base_url=cli.url, timeout=60) as http:
        token = json.loads(Path(cli.env["FEDLORA_ADMIN_CONFIG"]).read_text())["token"]
        fed = http.get(f"/api/v1/federations/{fid}",
                       headers={"Authorization": f"Bearer {token}"}).json()  # fmt: skip
    assert fed["model"] == json.loads(printed.stdout)
    assert fed["task_type"] == "causal_lm"
    assert fed["target_modules"] == ["q_proj", "v_proj"]
    assert fed["strategy"] == RECOMMENDED_STRATEGY  # the recommended default


def test_scripts_log_in_from_the_environment_and_errors_stay_one_line(
    cli: Cli, live_url: str
) -> None:
    env = {"FEDLORA_URL": live_url, "FEDLORA_ADMIN_EMAIL": ADMIN_EMAIL,
           "FEDLORA_ADMIN_PASSWORD": ADMIN_PASSWORD}  # fmt: skip
    org = cli("org", "create", "from-env", env=env).stdout.strip()
    assert not Path(cli.env["FEDLORA_ADMIN_CONFIG"]).exists()  # nothing stored
    token = httpx.post(f"{live_url}/api/v1/auth/login", timeout=60,
                       json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}).json()  # fmt: skip
    listing = cli("org", "list", env={"FEDLORA_URL": live_url,
                                      "FEDLORA_TOKEN": token["access_token"]}).stdout  # fmt: skip
    assert org in listing
    cli.env.update({"FEDLORA_URL": live_url, "FEDLORA_TOKEN": "expired-or-forged"})
    assert "the server answered 401" in cli.fails("org", "list")
    assert "run `fedlora login` again" in cli.fails("org", "list")
    cli.env["FEDLORA_TOKEN"] = token["access_token"]
    assert "no federation named 'nope': `fedlora federation list`" in cli.fails(
        "federation", "watch", "nope"
    )
    assert "the server answered 404" in cli.fails("federation", "start", str(uuid.uuid4()))
    assert "is not a task id" in cli.fails("task", "release", "nope")
    assert "has no global adapter yet" in cli.fails(
        "adapter", "download", cli("federation", "create", "--name", "empty", "--model-spec", "-",
                                   "--base-model-id", "m", "--global-rank", "2", "--rounds", "1",
                                   "--clients-per-round", "1", "--dp", "none",
                                   stdin=SPEC.model_dump_json()).stdout.strip()
    )  # fmt: skip


def test_an_unreachable_server_and_a_missing_login_are_explained(offline: Cli) -> None:
    assert "cannot reach http://127.0.0.1:9" in offline.fails("org", "list")
    offline.env.update({"FEDLORA_URL": "", "FEDLORA_TOKEN": ""})
    assert "not logged in: run `fedlora login --url" in offline.fails("org", "list")
    config = Path(offline.env["FEDLORA_ADMIN_CONFIG"])
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"url": "http://x", "token": "t", "expires_at": 1}))
    assert "your login to http://x expired" in offline.fails("org", "list")


def test_every_admin_command_has_help_and_none_imports_torch(offline: Cli, tmp_path: Path) -> None:
    commands = [
        ["login"], ["logout"], ["org", "create"], ["org", "list"], ["join-token", "create"],
        ["client", "list"], ["federation", "create"], ["federation", "list"],
        ["federation", "members"], ["federation", "add-member"], ["federation", "start"],
        ["federation", "pause"], ["federation", "resume"], ["federation", "cancel"],
        ["federation", "watch"], ["task", "list"], ["task", "release"], ["adapter", "list"],
        ["adapter", "download"],
    ]  # fmt: skip
    for command in commands:
        shown = offline(*command, "--help").stdout
        assert "Usage:" in shown, command
        assert len(shown.split()) > 12, command
    spec = tmp_path / "spec.json"
    spec.write_text(SPEC.model_dump_json())
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from fedlora.cli import app\n"
        "args = ['federation', 'create', '--dry-run', '--name', 'f', '--model-spec',"
        f" {str(spec)!r}, '--base-model-id', 'm', '--global-rank', '2', '--rounds', '1',"
        " '--clients-per-round', '1', '--dp', 'none']\n"
        "for argv in (args, ['org', 'list'], ['federation', 'watch', 'x', '--once']):\n"
        "    CliRunner().invoke(app, argv)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    )
    env = {**os.environ, **offline.env}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120, check=True)  # fmt: skip
    assert done.stdout.strip() == "[]", done.stderr


def test_watch_prints_each_change_to_a_log_and_stops_when_the_federation_ends(
    cli: Cli, app_sessions: sessionmaker[Session], store: ArtifactStore
) -> None:
    _login(cli)
    token = cli("join-token", "create", cli("org", "create", "o").stdout.strip()).stdout.strip()
    party = _enroll(cli.url, token, "c1")
    fid = cli(*_create("--dp", "none"), stdin=SPEC.model_dump_json()).stdout.strip()
    cli("federation", "add-member", fid, "c1", "--rank-budget", "2")
    r = _client_call(cli.url, party["api_key"], "PUT", f"/client/memberships/{fid}",
                     json={"fingerprint": SPEC.fingerprint})  # fmt: skip
    assert r.status_code == 200, r.text
    cli("federation", "start", fid)
    _open_round(app_sessions, store, fid)
    # a real process writing to a pipe, as `watch ... > watch.log` would
    env = {**os.environ, **cli.env, "FEDLORA_URL": "", "FEDLORA_TOKEN": ""}
    watch = subprocess.Popen(
        [sys.executable, "-m", "fedlora", "federation", "watch", fid, "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        assert watch.stdout is not None
        first = ""
        while "pending" not in first:  # the first table: round 1 waits for c1's task
            line = watch.stdout.readline()
            assert line, f"watch exited early: {first}"
            first += line
        with _admin(cli) as admin:
            (task,) = [t["id"] for t in admin.tasks(fid)]
        cli("task", "release", task, "--reason", "c1 left")
        cli("federation", "cancel", fid)
        rest, _ = watch.communicate(timeout=60)
    finally:
        watch.kill()
    assert watch.returncode == 0, first + rest
    assert "released by admin: c1 left" in rest  # printed again once something changed
    assert rest.count("--- ") >= 1
    assert "cancelled" in rest.split("--- ")[-1]  # the last table, then it stopped by itself


def _admin(cli: Cli) -> AdminClient:
    """The saved login's client (what the commands use)."""
    saved = json.loads(Path(cli.env["FEDLORA_ADMIN_CONFIG"]).read_text())
    return AdminClient(saved["url"], token=saved["token"])
