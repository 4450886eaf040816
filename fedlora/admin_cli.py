"""The ``fedlora`` admin commands: run a federation from a terminal, through the REST API.

``fedlora login`` once (or set ``FEDLORA_URL`` and a token or credentials, see
:mod:`fedlora.admin_config`), then ``org``, ``join-token``, ``client``, ``federation``,
``task`` and ``adapter`` commands. Each prints the server's message on an HTTP error (exit 1),
never a traceback. Nothing here imports torch.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import httpx
import typer
from rich.console import Console
from rich.table import Table

from fedlora.admin_client import AdminApiError, AdminClient
from fedlora.admin_config import AdminConfigError, Login, connect, forget_login, save_login
from fedlora.admin_dp_preview import DEFAULT_SIZES, preview_request, render
from fedlora.admin_spec import SpecError, federation_body, read_model_spec

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
P = ParamSpec("P")
R = TypeVar("R")

URL_OPTION = typer.Option(
    None, "--url", envvar="FEDLORA_URL", help="Server URL (default: the one you logged in to)."
)


class CliError(RuntimeError):
    """A problem with the command's input; the message says what to change."""


def friendly(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the errors an admin can fix into one red line and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except AdminApiError as exc:
            hint = ": run `fedlora login` again" if exc.status_code == 401 else ""
            message = f"the server answered {exc.status_code}: {exc.detail}{hint}"
        except httpx.TransportError as exc:
            message = _unreachable(exc)
        except (AdminConfigError, SpecError, CliError) as exc:
            message = str(exc)
        err.print(f"[bold red]error[/] {message}", highlight=False)
        raise typer.Exit(1)

    return wrapper


def _unreachable(exc: httpx.TransportError) -> str:
    try:
        url: object = exc.request.url
    except RuntimeError:  # no request attached
        url = "the server"
    return (
        f"cannot reach {url} ({type(exc).__name__}: {exc}); is the API running "
        "(`fedlora serve`) and the URL right?"
    )


def _client(url: str | None) -> AdminClient:
    return connect(url)


def _resolve(items: list[dict[str, Any]], ref: str, kind: str, listing: str) -> str:
    """The id of the item whose id or exact name is ``ref``."""
    try:
        return str(uuid.UUID(ref))
    except ValueError:
        pass
    found = [str(i["id"]) for i in items if i.get("name") == ref]
    if len(found) == 1:
        return found[0]
    if found:
        raise CliError(f"{len(found)} {kind}s are named {ref!r}: give the id (`{listing}`)")
    raise CliError(f"no {kind} named {ref!r}: `{listing}` lists them")


def _federation_id(admin: AdminClient, ref: str) -> str:
    try:
        return str(uuid.UUID(ref))
    except ValueError:
        return _resolve(admin.federations(), ref, "federation", "fedlora federation list")


def _table(*columns: str) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column)
    return table


def _when(value: Any) -> str:
    return str(value)[:19].replace("T", " ") if value else "—"


# ----------------------------------------------------------------------------- login


@friendly
def login(
    url: str = typer.Option(..., "--url", envvar="FEDLORA_URL", help="Server URL."),
    email: str = typer.Option(..., prompt=True, envvar="FEDLORA_ADMIN_EMAIL", help="Admin email."),
    password: str = typer.Option(
        ..., prompt=True, hide_input=True, envvar="FEDLORA_ADMIN_PASSWORD", help="Admin password."
    ),
) -> None:
    """Log in as an admin; the token (never the password) is kept in a file with mode 0600.

    The file: $FEDLORA_ADMIN_CONFIG, else ~/.config/fedlora/admin.json. Scripts can skip this
    and set FEDLORA_URL with FEDLORA_TOKEN, or with FEDLORA_ADMIN_EMAIL and _PASSWORD.
    """
    with AdminClient(url) as admin:
        token = admin.login(email, password)
    seconds = float(token.get("expires_in", 0))
    path = save_login(
        Login(url.rstrip("/"), str(token["access_token"]), email, time.time() + seconds)
    )
    err.print(
        f"[green]logged in[/] to {url} as {email}; token saved to {path} (mode 0600), "
        f"valid for {seconds / 3600:.0f} h"
    )


def logout() -> None:
    """Forget the saved login."""
    path = forget_login()
    err.print(f"removed {path}" if path else "not logged in")


# ----------------------------------------------------------------------------- organizations

org_app = typer.Typer(help="Organizations: the parties that enroll clients.", no_args_is_help=True)


@org_app.command("create")
@friendly
def org_create(
    name: str = typer.Argument(..., help="The organization's name (unique)."),
    description: str = typer.Option("", help="A note for admins."),
    url: str | None = URL_OPTION,
) -> None:
    """Create an organization; prints its id."""
    with _client(url) as admin:
        org_id = admin.create_organization(name, description)
    err.print(f"[green]created[/] organization {name}")
    out.print(org_id)


@org_app.command("list")
@friendly
def org_list(url: str | None = URL_OPTION) -> None:
    """List organizations."""
    with _client(url) as admin:
        orgs = admin.organizations()
    table = _table("id", "name", "created")
    for o in orgs:
        table.add_row(str(o["id"]), str(o["name"]), _when(o["created_at"]))
    out.print(table)


# ----------------------------------------------------------------------------- join tokens

token_app = typer.Typer(help="One-time join tokens that enroll a client.", no_args_is_help=True)


@token_app.command("create")
@friendly
def token_create(
    organization: str = typer.Argument(..., help="Organization id or name."),
    expires_in_minutes: int = typer.Option(24 * 60, min=1, help="Minutes the token is valid."),
    note: str = typer.Option("", help="A note for admins (e.g. who received it)."),
    url: str | None = URL_OPTION,
) -> None:
    """Issue a one-time join token for an organization; prints the token (shown once)."""
    with _client(url) as admin:
        org_id = _resolve(admin.organizations(), organization, "organization", "fedlora org list")
        token = admin.create_join_token(org_id, expires_in_minutes=expires_in_minutes, note=note)
        server = admin.base_url
    err.print(
        "[green]join token[/] (shown once); the organization runs:\n"
        f"  fedlora-client enroll --server {server} --token <token>"
    )
    out.print(token)


# ----------------------------------------------------------------------------- clients

client_app = typer.Typer(help="Enrolled clients.", no_args_is_help=True)


@client_app.command("list")
@friendly
def client_list(
    organization: str | None = typer.Option(None, "--org", help="Only this organization's."),
    url: str | None = URL_OPTION,
) -> None:
    """List clients (the ids `federation add-member` takes)."""
    with _client(url) as admin:
        org_id = None
        if organization:
            orgs = admin.organizations()
            org_id = _resolve(orgs, organization, "organization", "fedlora org list")
        clients = admin.clients(org_id)
    table = _table("id", "name", "organization", "hardware", "last seen", "revoked")
    for c in clients:
        hw = c.get("hardware") or {}
        table.add_row(
            str(c["id"]), str(c["name"]), str(c["organization_id"])[:8],
            str(hw.get("accelerator", "—")), _when(c.get("last_seen_at")),
            "yes" if c.get("revoked") else "",
        )  # fmt: skip
    out.print(table)


# ----------------------------------------------------------------------------- federations

federation_app = typer.Typer(help="Create, run and watch federations.", no_args_is_help=True)


class DPMode(StrEnum):
    none = "none"
    sample = "sample"
    client = "client"


class TaskType(StrEnum):
    seq_cls = "seq_cls"
    causal_lm = "causal_lm"


@federation_app.command("create")
@friendly
def federation_create(
    name: str | None = typer.Option(None, help="Unique name."),
    model_spec: str | None = typer.Option(
        None,
        "--model-spec",
        help="What `fedlora-client inspect MODEL_DIR --task ... --target ...` printed: a "
        "file, '-' for stdin, or the JSON itself.",
    ),
    base_model_id: str | None = typer.Option(
        None,
        help="The base model's name, e.g. sentence-transformers/all-MiniLM-L6-v2 (a label; "
        "the spec's fingerprint is what clients must match).",
    ),
    task_type: TaskType | None = typer.Option(
        None, help="Default: seq_cls if the spec lists a classification head, else causal_lm."
    ),
    target_module: list[str] | None = typer.Option(
        None, help="PEFT target_modules name (repeat). Default: the spec's module names."
    ),
    strategy: str | None = typer.Option(None, help="Aggregation strategy (`fedlora strategies`)."),
    strategy_param: list[str] | None = typer.Option(
        None, help="KEY=VALUE strategy parameter (repeat); VALUE is JSON or text."
    ),
    global_rank: int | None = typer.Option(None, min=1, help="Rank of the global adapter."),
    rounds: int | None = typer.Option(None, min=1, help="Rounds to run."),
    clients_per_round: int | None = typer.Option(None, min=1, help="Members picked per round."),
    min_clients: int | None = typer.Option(
        None, min=1, help="Fewest updates a round needs (default: --clients-per-round)."
    ),
    deadline_seconds: int | None = typer.Option(None, min=10, help="A round's deadline."),
    dp: DPMode | None = typer.Option(
        None, help="Differential privacy: none, sample (per example) or client (per update)."
    ),
    target_epsilon: float | None = typer.Option(None, help="Calibrate the noise to this ε."),
    noise_multiplier: float | None = typer.Option(None, help="Or set the noise σ directly."),
    epsilon_budget: float | None = typer.Option(None, help="Per-client ε cap."),
    clip_norm: float | None = typer.Option(None, help="Clipping norm C."),
    delta: float | None = typer.Option(None, help="δ of (ε, δ)-DP."),
    training: list[str] | None = typer.Option(
        None, help="KEY=VALUE local-training setting (repeat), e.g. steps=20, batch_size=16."
    ),
    description: str | None = typer.Option(None, help="A note for admins."),
    body: Path | None = typer.Option(
        None, help="A JSON body of POST /api/v1/federations to start from; options override it."
    ),
    size: list[int] | None = typer.Option(
        None,
        "--size",
        min=1,
        help=f"An organization's size in examples to preview DP for (repeat); default "
        f"{DEFAULT_SIZES}.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the request body and its DP preview; create nothing."
    ),
    url: str | None = URL_OPTION,
) -> None:
    """Create a draft federation over the model `fedlora-client inspect` described; prints its id.

    First prints the DP preview (on stderr): for organizations of a few sizes, the batch,
    steps, sigma, epsilon after all rounds and noise-to-signal, and the warnings to read
    before starting it. Settings that no noise multiplier can meet are refused before anything
    is created.

    Example: fedlora federation create --name sst2 --model-spec spec.json
    --base-model-id all-MiniLM-L6-v2 --clients-per-round 2 --rounds 5 --dp none
    """
    from worker.strategies.params import RECOMMENDED_STRATEGY  # torch-free

    start: dict[str, Any] = {}
    if body is not None:
        try:
            start = json.loads(body.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CliError(f"--body {body}: {exc}") from None
        if not isinstance(start, dict):
            raise CliError(f"--body {body}: expected a JSON object")
    spec = read_model_spec(model_spec) if model_spec is not None else None
    request = federation_body(
        start,
        spec=spec,
        name=name,
        description=description,
        base_model_id=base_model_id,
        task_type=task_type.value if task_type else None,
        target_modules=target_module or None,
        strategy=strategy or (None if "strategy" in start else RECOMMENDED_STRATEGY),
        strategy_params=strategy_param or [],
        global_rank=global_rank,
        num_rounds=rounds,
        clients_per_round=clients_per_round,
        min_clients=min_clients,
        round_deadline_seconds=deadline_seconds,
        dp_mode=dp.value if dp else None,
        dp_values={
            "target_epsilon": target_epsilon,
            "noise_multiplier": noise_multiplier,
            "epsilon_budget": epsilon_budget,
            "clip_norm": clip_norm,
            "delta": delta,
        },
        training=training or [],
    )
    preview_body = preview_request(request, size)
    if dry_run:
        out.print_json(json.dumps(request))
        _dry_run_preview(url, preview_body)
        return
    with _client(url) as admin:
        preview = admin.dp_preview(preview_body)
        fed_id = admin.create_federation(request)
    err.print(render(preview))
    err.print(
        f"[green]created[/] federation {request['name']} (draft): add members with "
        f"`fedlora federation add-member {fed_id} CLIENT --rank-budget R`, then start it"
    )
    out.print(fed_id)


def _dry_run_preview(url: str | None, body: dict[str, Any]) -> None:
    """The draft's DP preview on stderr; without a server or a login, a note instead (the dry
    run's request body stands on its own). The server's refusal of the settings is an error."""
    try:
        with _client(url) as admin:
            preview = admin.dp_preview(body)
    except (AdminConfigError, httpx.TransportError, AdminApiError) as exc:
        if isinstance(exc, AdminApiError) and exc.status_code != 401:
            raise
        if isinstance(exc, httpx.TransportError):
            reason = _unreachable(exc)
        elif isinstance(exc, AdminApiError):
            reason = f"the server answered 401: {exc.detail}: run `fedlora login` again"
        else:
            reason = str(exc)
        err.print(f"[yellow]no DP preview[/] (it needs the server): {reason}", highlight=False)
        return
    err.print(render(preview))


@federation_app.command("dp-preview")
@friendly
def federation_dp_preview(
    federation: str = typer.Argument(..., help="Federation id or name."),
    size: list[int] | None = typer.Option(
        None,
        "--size",
        min=1,
        help="An organization's size in examples (repeat, at most 12); "
        f"default: the members' reported sizes, else {DEFAULT_SIZES}.",
    ),
    url: str | None = URL_OPTION,
) -> None:
    """What the federation's DP settings do to its organizations: for each size, the batch,
    steps per round, sigma, epsilon after all rounds and the expected noise-to-signal ratio,
    with the warnings to read before starting it (e.g. client-level DP with few organizations).
    """
    with _client(url) as admin:
        preview = admin.federation_dp_preview(_federation_id(admin, federation), size or None)
    out.print(render(preview))


@federation_app.command("list")
@friendly
def federation_list(
    status: str | None = typer.Option(None, help="Only federations in this status."),
    url: str | None = URL_OPTION,
) -> None:
    """List federations."""
    with _client(url) as admin:
        feds = admin.federations(status)
    table = _table("id", "name", "status", "strategy", "rounds", "model", "created")
    for f in feds:
        table.add_row(
            str(f["id"]), str(f["name"]), str(f["status"]), str(f["strategy"]),
            str(f["num_rounds"]), str(f["base_model_id"]), _when(f["created_at"]),
        )  # fmt: skip
    out.print(table)


@federation_app.command("members")
@friendly
def federation_members(
    federation: str = typer.Argument(..., help="Federation id or name."),
    url: str | None = URL_OPTION,
) -> None:
    """List a federation's members: rank budget, fingerprint, epsilon spent."""
    with _client(url) as admin:
        fid = _federation_id(admin, federation)
        fed, members = admin.federation(fid), admin.members(fid)
        names = {str(c["id"]): str(c["name"]) for c in admin.clients()}
    table = _table("client", "client id", "rank budget", "fingerprint", "ε spent", "active")
    for m in members:
        fp = m.get("fingerprint")
        match = "—" if fp is None else ("matches" if fp == fed["model"]["fingerprint"] else "WRONG")
        table.add_row(
            names.get(str(m["client_id"]), "?"), str(m["client_id"]), str(m["rank_budget"]),
            match, f"{float(m.get('epsilon_spent') or 0):.4g}", "yes" if m["active"] else "no",
        )  # fmt: skip
    out.print(table)


@federation_app.command("add-member")
@friendly
def federation_add_member(
    federation: str = typer.Argument(..., help="Federation id or name."),
    client: str = typer.Argument(..., help="Client id or name (`fedlora client list`)."),
    rank_budget: int = typer.Option(..., min=1, help="Highest LoRA rank this client trains."),
    max_examples: int | None = typer.Option(
        None,
        min=1,
        help="The most examples this client's updates count for as aggregation weight (its "
        "claimed num_examples is capped at it). Default: no maximum.",
    ),
    url: str | None = URL_OPTION,
) -> None:
    """Add an enrolled client to a federation with its rank budget."""
    with _client(url) as admin:
        fid = _federation_id(admin, federation)
        cid = _resolve(admin.clients(), client, "client", "fedlora client list")
        admin.add_member(fid, cid, rank_budget, max_examples=max_examples)
    cap = "" if max_examples is None else f", at most {max_examples} examples"
    err.print(f"[green]added[/] client {client} (rank budget {rank_budget}{cap})")


def _lifecycle(verb: str, done: str) -> Callable[..., None]:
    def command(
        federation: str = typer.Argument(..., help="Federation id or name."),
        url: str | None = URL_OPTION,
    ) -> None:
        with _client(url) as admin:
            fid = _federation_id(admin, federation)
            admin.action(fid, verb)
            status = admin.federation(fid)["status"]
        err.print(f"[green]{done}[/]: federation {federation} is {status}")

    command.__doc__ = {
        "start": "Start a draft federation: the worker opens round 1.",
        "pause": "Pause: no task is handed out and no round opens until resume.",
        "resume": "Resume a paused federation.",
        "cancel": "Stop for good: the open round fails and its tasks are dropped.",
    }[verb]
    return friendly(command)


for _verb, _done in (
    ("start", "started"), ("pause", "paused"), ("resume", "resumed"), ("cancel", "cancelled"),
):  # fmt: skip
    federation_app.command(_verb)(_lifecycle(_verb, _done))


@federation_app.command("watch")
@friendly
def federation_watch(
    federation: str = typer.Argument(..., help="Federation id or name."),
    interval: float = typer.Option(2.0, min=0.2, help="Seconds between refreshes."),
    once: bool = typer.Option(False, "--once", help="Print the table once and exit."),
    url: str | None = URL_OPTION,
) -> None:
    """Live table of rounds: state, participants, train loss, ε, evaluation metrics.

    Stops when the federation completes (and its final adapter's evaluation pass ends) or is
    cancelled (Ctrl-C stops watching only). When the output is not a terminal (a log file, a
    pipe), each change is printed as a new table.
    """
    from rich.live import Live

    from fedlora.admin_watch import FINAL_STATUSES, render, round_rows

    with _client(url) as admin:
        fid = _federation_id(admin, federation)
        names = {str(c["id"]): str(c["name"]) for c in admin.clients()}

        def snapshot() -> tuple[Any, str, bool]:
            fed = admin.federation(fid)
            tasks, rounds = admin.tasks(fid), admin.rounds(fid)
            rows = round_rows(rounds, tasks, admin.updates(fid), admin.adapters(fid))
            key = repr((fed["status"], rows, [(t["id"], t["status"]) for t in tasks]))
            # a completed federation may still be scoring its final adapter (evaluation pass)
            running = any(r["state"] in ("open", "aggregating") for r in rounds)
            finished = fed["status"] in FINAL_STATUSES and not running
            return render(fed, rows, tasks, names), key, finished

        view, key, finished = snapshot()
        if once or finished:
            out.print(view)
            return
        try:
            if out.is_terminal:
                with Live(view, console=out, refresh_per_second=4) as live:
                    while not finished:
                        time.sleep(interval)
                        view, key, finished = snapshot()
                        live.update(view)
                return
            out.print(view)
            while not finished:
                time.sleep(interval)
                view, new_key, finished = snapshot()
                if new_key != key:
                    out.print(f"--- {time.strftime('%H:%M:%S')}")
                    out.print(view)
                    key = new_key
        except KeyboardInterrupt:
            err.print("stopped watching (the federation runs on)")


# ----------------------------------------------------------------------------- tasks

task_app = typer.Typer(
    help="Round tasks: who trains what, and releasing one.", no_args_is_help=True
)


@task_app.command("list")
@friendly
def task_list(
    federation: str = typer.Argument(..., help="Federation id or name."),
    round_number: int | None = typer.Option(None, "--round", help="Only this round."),
    url: str | None = URL_OPTION,
) -> None:
    """List a federation's tasks with their status (and why a released one was released)."""
    with _client(url) as admin:
        fid = _federation_id(admin, federation)
        numbers = {str(r["id"]): int(r["number"]) for r in admin.rounds(fid)}
        tasks = admin.tasks(fid)
        names = {str(c["id"]): str(c["name"]) for c in admin.clients()}
    table = _table("task id", "round", "client", "rank", "status", "lease expires", "reason")
    for t in tasks:
        number = numbers.get(str(t["round_id"]))
        if round_number is not None and number != round_number:
            continue
        rank = (t.get("plan") or {}).get("lora", {}).get("rank", "?")
        table.add_row(
            str(t["id"]), str(number), names.get(str(t["client_id"]), "?"), str(rank),
            str(t["status"]), _when(t.get("lease_expires_at")), str(t.get("release_reason") or ""),
        )  # fmt: skip
    out.print(table)


@task_app.command("release")
@friendly
def task_release(
    task_id: str = typer.Argument(..., help="Task id (`fedlora task list FEDERATION`)."),
    reason: str = typer.Option("released by an admin", help="Why; shown with the task."),
    url: str | None = URL_OPTION,
) -> None:
    """Release a pending or leased task (a client that is gone or stuck): its round stops
    waiting for it and goes on with the others."""
    try:
        uuid.UUID(task_id)
    except ValueError:
        raise CliError(f"{task_id!r} is not a task id: `fedlora task list FEDERATION`") from None
    with _client(url) as admin:
        task = admin.release_task(task_id, reason)
    err.print(f"[green]released[/] task {task['id']} ({task['release_reason']})")


# ----------------------------------------------------------------------------- adapters

adapter_app = typer.Typer(help="Global adapters, one per completed round.", no_args_is_help=True)


@adapter_app.command("list")
@friendly
def adapter_list(
    federation: str = typer.Argument(..., help="Federation id or name."),
    url: str | None = URL_OPTION,
) -> None:
    """List a federation's global adapters with their federated evaluation; the best (by
    federated validation) and the latest (the final one) are marked."""
    with _client(url) as admin:
        adapters = admin.adapters(_federation_id(admin, federation))
    table = _table("round", "", "adapter id", "federated eval", "strategy", "ε", "metrics",
                   "created")  # fmt: skip
    for a in adapters:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(a.get("metrics", {}).items())
                            if isinstance(v, int | float))  # fmt: skip
        marks = " ".join(m for m, on in (("best", a.get("is_best")), ("latest", a.get("is_latest")))
                         if on)  # fmt: skip
        table.add_row(
            str(a["round_number"]), marks, str(a["id"]), _evaluation(a.get("evaluation")),
            str(a["strategy"]), f"{float(a.get('epsilon') or 0):.4g}", metrics or "—",
            _when(a["created_at"]),
        )  # fmt: skip
    out.print(table)


def _evaluation(score: dict[str, Any] | None) -> str:
    """'accuracy=0.81 loss=0.42 (3 clients)': an adapter's federated evaluation."""
    if not score:
        return "—"
    shown = [f"{k}={float(score[k]):.4g}" for k in ("accuracy", "perplexity", "loss")
             if score.get(k) is not None]  # fmt: skip
    return f"{' '.join(shown)} ({score['num_clients']} clients)"


@adapter_app.command("download")
@friendly
def adapter_download(
    federation: str = typer.Argument(..., help="Federation id or name."),
    round_number: int | None = typer.Option(
        None, "--round", help="That round's adapter (default: the latest, i.e. the final one)."
    ),
    best: bool = typer.Option(
        False, "--best", help="The best adapter by federated evaluation instead of the latest."
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", help="Folder to write (default: ./<federation>-round-<n>)."
    ),
    url: str | None = URL_OPTION,
) -> None:
    """Download a global adapter as a PEFT folder (adapter_config.json +
    adapter_model.safetensors) that PeftModel.from_pretrained loads."""
    with _client(url) as admin:
        fid = _federation_id(admin, federation)
        fed, adapters = admin.federation(fid), admin.adapters(fid)
        if not adapters:
            raise CliError(
                f"federation {fed['name']} has no global adapter yet: none of its rounds has "
                "completed (`fedlora federation watch` shows them)"
            )
        if best and round_number is not None:
            raise CliError("give --best or --round, not both")
        if best:
            scored = [a for a in adapters if a.get("is_best")]
            if not scored:
                raise CliError(
                    f"federation {fed['name']} has no evaluated adapter yet: clients score each "
                    "adapter when the next round starts (`fedlora adapter list` shows them)"
                )
            chosen = scored[0]
        elif round_number is None:
            chosen = max(adapters, key=lambda a: int(a["round_number"]))
        else:
            matches = [a for a in adapters if int(a["round_number"]) == round_number]
            if not matches:
                have = ", ".join(str(a["round_number"]) for a in adapters)
                raise CliError(f"round {round_number} has no adapter; rounds with one: {have}")
            chosen = matches[0]
        folder = out_dir or Path(f"{fed['name']}-round-{chosen['round_number']}")
        try:
            admin.download_adapter(str(chosen["id"]), folder)
        except RuntimeError as exc:
            if isinstance(exc, AdminApiError):
                raise
            raise CliError(str(exc)) from None
    err.print(
        f"[green]saved[/] round {chosen['round_number']}'s adapter to {folder}; load it with "
        f'PeftModel.from_pretrained(base_model, "{folder}")'
    )
    out.print(str(folder))


def register(app: typer.Typer) -> None:
    """Add the admin commands to the ``fedlora`` command."""
    app.command("login")(login)
    app.command("logout")(logout)
    app.add_typer(org_app, name="org")
    app.add_typer(token_app, name="join-token")
    app.add_typer(client_app, name="client")
    app.add_typer(federation_app, name="federation")
    app.add_typer(task_app, name="task")
    app.add_typer(adapter_app, name="adapter")
