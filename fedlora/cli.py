"""The ``fedlora`` command: serve the API, run a worker, list strategies, run the demo, and the
admin commands (:mod:`fedlora.admin_cli`) that run a federation through the REST API.

Each command imports what it needs when it runs, so ``fedlora serve`` never loads torch.
"""

from __future__ import annotations

from pathlib import Path

import typer

from fedlora import __version__
from fedlora.admin_cli import register as register_admin_commands  # torch-free
from worker.strategies.params import RECOMMENDED_STRATEGY  # torch-free

app = typer.Typer(
    name="fedlora",
    help="Federated LoRA fine-tuning across organizations with heterogeneous ranks.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the fedlora version."""
    typer.echo(__version__)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port."),
    workers: int = typer.Option(1, min=1, help="API processes."),
    migrate: bool = typer.Option(True, help="Run the database migrations before serving."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    keep_alive: int = typer.Option(
        75, min=1, help="Seconds an idle keep-alive connection stays open (longer than clients')."
    ),
) -> None:
    """Serve the control-plane API with uvicorn (settings from FEDLORA_*; never loads torch)."""
    import uvicorn

    from api.config import get_settings
    from api.migrate import upgrade_head

    if migrate:
        upgrade_head(get_settings())
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        proxy_headers=True,
        timeout_keep_alive=keep_alive,
    )


@app.command()
def worker(
    concurrency: int = typer.Option(1, min=1, help="Parallel aggregation jobs (1 per GPU)."),
    beat: bool = typer.Option(
        False, "--beat", help="Also run the scheduler (deadline sweeper) in this process."
    ),
    loglevel: str = typer.Option("info", help="Celery log level."),
) -> None:
    """Run an aggregation worker on the configured broker (embedded: a SQLite file)."""
    from api.config import get_settings
    from worker.celery_app import app as celery_app

    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--concurrency={concurrency}",
        f"--queues={get_settings().aggregation_queue}",
        "--without-gossip",
        "--without-mingle",
    ]
    if concurrency == 1:
        argv.append("--pool=solo")  # one job at a time in this process: simplest to kill/retry
    if beat:
        argv.append("--beat")
    celery_app.worker_main(argv)


@app.command()
def scheduler(loglevel: str = typer.Option("info", help="Celery log level.")) -> None:
    """Run the scheduler that enqueues the deadline sweeper (run exactly one)."""
    from worker.celery_app import app as celery_app

    celery_app.start(["beat", f"--loglevel={loglevel}"])


@app.command()
def strategies(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the registered aggregation strategies with a one-line description each."""
    import json

    from worker.strategies import RECOMMENDED_STRATEGY, STRATEGY_PARAMS, list_strategies

    rows = list_strategies()
    if as_json:
        doc = [
            {
                "name": n,
                "description": d,
                "params_schema": STRATEGY_PARAMS[n].model_json_schema(),
                "recommended": n == RECOMMENDED_STRATEGY,
            }
            for n, d in rows
        ]
        typer.echo(json.dumps(doc, indent=2))
        return
    width = max(len(n) for n, _ in rows)
    for name, description in rows:
        mark = "  (recommended: docs/benchmarks.md)" if name == RECOMMENDED_STRATEGY else ""
        typer.echo(f"{name:<{width}}  {description}{mark}")


@app.command()
def demo(
    strategy: str = typer.Option(
        RECOMMENDED_STRATEGY, help="Aggregation strategy (`fedlora strategies`)."
    ),
    clients: int = typer.Option(4, min=1, max=16, help="Simulated organizations."),
    ranks: str = typer.Option(
        "2,4,8,16", help="Rank budgets, comma-separated; cycled over the organizations."
    ),
    rounds: int = typer.Option(5, min=1, help="Federated rounds."),
    out: Path = typer.Option(Path("demo-out"), help="Where the adapter and summary go."),
    data: Path | None = typer.Option(
        None, help="A sentence/label TSV (e.g. SST-2) instead of the generated data."
    ),
    epsilon: float = typer.Option(
        8.0, help="Target epsilon of sample-level DP over the run (0: no DP)."
    ),
    serve: bool = typer.Option(True, help="Keep the dashboard up at the end (--no-serve exits)."),
    port: int | None = typer.Option(None, help="API/dashboard port (default: a free one)."),
    seed: int = typer.Option(0, help="Seed of the data and its split."),
    examples: int | None = typer.Option(
        None,
        min=100,
        max=1_000_000,
        help="Training examples over all organizations, generated or read from --data "
        "(default: the demo's own).",
    ),
) -> None:
    """Run a demo federation on the embedded default (SQLite, local artifacts, a real worker)."""
    from fedlora.demo import Demo, DemoOptions
    from fedlora_client.protocol import STRATEGY_NAMES

    if strategy not in STRATEGY_NAMES:
        choices = ", ".join(STRATEGY_NAMES)
        raise typer.BadParameter(f"{strategy!r}: choose one of {choices}", param_hint="--strategy")
    try:
        budget = [int(r) for r in ranks.split(",") if r.strip()]
    except ValueError:
        budget = []
    if not budget or min(budget) < 1:
        raise typer.BadParameter("positive integers, e.g. 2,4,8,16", param_hint="--ranks")
    if data is not None and not data.is_file():
        raise typer.BadParameter(f"{data} is not a file", param_hint="--data")
    options = DemoOptions(
        strategy=strategy,
        ranks=[budget[i % len(budget)] for i in range(clients)],
        rounds=rounds,
        out=out,
        data=data,
        serve=serve,
        port=port,
        seed=seed,
        **({"examples": examples} if examples is not None else {}),
        target_epsilon=epsilon or None,
    )
    Demo(options).run()


register_admin_commands(app)  # login, org, join-token, client, federation, task, adapter


def main() -> None:
    app()
