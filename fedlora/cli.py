"""The ``fedlora`` command: serve the API, run a worker, list strategies, run the demo.

Each command imports what it needs when it runs, so ``fedlora serve`` never loads torch.
"""

from __future__ import annotations

import typer

from fedlora import __version__

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


def main() -> None:
    app()
