"""What ``fedlora federation watch`` shows: one row per round, built from the admin API's lists.

Per round: its state, who took part (tasks by status), the mean training loss of the accepted
updates, the largest cumulative epsilon any participant has spent by then, and whatever
evaluation metrics exist: the federated evaluation of the adapter the round published (its
clients' example-weighted accuracy and loss, or perplexity, on their own held-out data; the
best adapter is marked), the global adapter's ``eval*`` metrics and the mean of the clients'
local ``eval*`` metrics reported with their updates. The evaluation pass after the last round
(which scores the final adapter) is listed as such.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

DONE = ("uploaded", "reported")
FINAL_STATUSES = ("completed", "cancelled")
MAX_EVAL_COLUMNS = 3


@dataclass
class RoundRow:
    round_id: str
    number: int
    state: str
    participants: str
    train_loss: float | None
    epsilon: float | None
    evals: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value == value else None  # drop NaN


def _participants(tasks: list[dict[str, Any]]) -> str:
    if not tasks:
        return "—"
    counts = Counter(str(t["status"]) for t in tasks)
    done = sum(counts.pop(s, 0) for s in DONE)
    rest = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return f"{done}/{len(tasks)} uploaded" + (f" · {rest}" if rest else "")


def round_rows(
    rounds: list[dict[str, Any]],
    tasks: list[dict[str, Any]],
    updates: list[dict[str, Any]],
    adapters: list[dict[str, Any]],
) -> list[RoundRow]:
    """One :class:`RoundRow` per round, oldest first."""
    tasks_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task in tasks:
        tasks_of[str(task["round_id"])].append(task)
    updates_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for update in updates:
        updates_of[str(update["round_id"])].append(update)
    adapter_of = {str(a["round_id"]): a for a in adapters}

    rows: list[RoundRow] = []
    spent: dict[str, float] = defaultdict(float)  # cumulative epsilon per client
    for rnd in sorted(rounds, key=lambda r: int(r["number"])):
        rid = str(rnd["id"])
        ups = updates_of.get(rid, [])
        for u in ups:
            spent[str(u["client_id"])] += float(u.get("epsilon") or 0.0)
        losses = [
            v for u in ups if (v := _number(u.get("metrics", {}).get("train_loss"))) is not None
        ]
        evals: dict[str, float] = {}
        scored = rnd.get("evaluation") or {}
        for key in ("accuracy", "perplexity", "loss"):
            if (v := _number(scored.get(key))) is not None:
                evals[f"federated {key}"] = v
        adapter = adapter_of.get(rid)
        for key, value in sorted((adapter or {}).get("metrics", {}).items()):
            if key.startswith("eval") and (v := _number(value)) is not None:
                evals[f"global {key}"] = v
        local: dict[str, list[float]] = defaultdict(list)
        for u in ups:
            for key, value in u.get("metrics", {}).items():
                if key.startswith("eval") and (v := _number(value)) is not None:
                    local[key].append(v)
        for key in sorted(local):
            evals[f"local {key}"] = sum(local[key]) / len(local[key])
        epsilon = (
            float(adapter["epsilon"])
            if adapter is not None
            else max((spent[str(u["client_id"])] for u in ups), default=None)
        )
        rows.append(
            RoundRow(
                round_id=rid,
                number=int(rnd["number"]),
                state=str(rnd["state"]),
                participants=_participants(tasks_of.get(rid, [])),
                train_loss=_mean(losses),
                epsilon=epsilon,
                evals=evals,
                note=_note(rnd),
            )
        )
    return rows


def _note(rnd: dict[str, Any]) -> str:
    parts = []
    if rnd.get("kind") == "evaluation":
        parts.append("evaluation pass: members score the final adapter")
    if rnd.get("best"):
        parts.append("best adapter")
    scored = rnd.get("evaluation") or {}
    if scored.get("num_clients"):
        parts.append(f"scored by {scored['num_clients']} client(s)")
    if rnd.get("failure_reason"):
        parts.append(str(rnd["failure_reason"]))
    return " · ".join(parts)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


STATE_STYLE = {"open": "cyan", "aggregating": "yellow", "completed": "green", "failed": "red"}


def render(
    federation: dict[str, Any],
    rows: list[RoundRow],
    tasks: list[dict[str, Any]],
    names: dict[str, str],
) -> RenderableType:
    """The federation's header line, the rounds table and the released tasks' reasons."""
    completed = int(federation.get("rounds_completed", 0))
    failed = int(federation.get("rounds_failed", 0))
    head = Text.assemble(
        (str(federation["name"]), "bold"),
        f"  {federation['status']} · {federation['strategy']} · ",
        f"{completed}/{federation['num_rounds']} rounds completed",
        f", {failed} failed (retried)" if failed else "",
    )
    eval_names: list[str] = []
    for row in rows:
        eval_names += [k for k in row.evals if k not in eval_names]
    eval_names = eval_names[:MAX_EVAL_COLUMNS]
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("Round", justify="right")
    table.add_column("State")
    table.add_column("Participants")
    table.add_column("Train loss", justify="right")
    table.add_column("ε spent (max)", justify="right")
    for name in eval_names:
        table.add_column(name, justify="right")
    table.add_column("Note", overflow="fold")
    for row in rows:
        table.add_row(
            str(row.number),
            Text(row.state, style=STATE_STYLE.get(row.state, "")),
            row.participants,
            _fmt(row.train_loss),
            _fmt(row.epsilon),
            *(_fmt(row.evals.get(name)) for name in eval_names),
            row.note,
        )
    parts: list[RenderableType] = [head]
    parts.append(table if rows else Text("No rounds yet.", style="dim"))
    number_of = {row.round_id: row.number for row in rows}
    for t in tasks:
        if t.get("status") != "released":
            continue
        who = names.get(str(t["client_id"]), str(t["client_id"])[:8])
        where = f"round {number_of.get(str(t['round_id']), '?')}"
        parts.append(
            Text(
                f"{where}: {who}'s task {t['id']} released by {t.get('released_by') or '?'}: "
                f"{t.get('release_reason') or ''}",
                style="red",
            )
        )
    return Group(*parts)
