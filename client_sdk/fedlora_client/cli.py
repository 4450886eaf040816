"""``fedlora-client``: enroll, inspect a local model for the admin, participate.

Every error the SDK knows is printed as one actionable line (exit code 1); nothing prints a
traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from fedlora_client._credentials import DEFAULT_CREDENTIALS_PATH
from fedlora_client._errors import FedloraClientError

app = typer.Typer(
    name="fedlora-client",
    help="Take part in a fedlora federation: train a LoRA on your data, privately.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
T = TypeVar("T")
_state = {"debug": False}


@app.callback()
def _main(debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False) -> None:
    _state["debug"] = debug


def _friendly(action: Callable[[], T]) -> T:
    """Run ``action``; turn known errors (and CUDA OOM) into one red line and exit code 1."""
    try:
        return action()
    except FedloraClientError as exc:
        if _state["debug"]:
            raise
        message = f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        torch = sys.modules.get("torch")  # loaded only by commands that train or read models
        if _state["debug"] or torch is None or not isinstance(exc, torch.OutOfMemoryError):
            raise
        message = f"out of GPU memory ({exc}). Ask for a smaller rank, lower the batch size or "
        message += "max_seq_len, or set model.device = 'cpu'."
    console.print(f"[bold red]error[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _hardware() -> Any:
    from fedlora_client._model import detect_hardware

    return detect_hardware("cuda")


@app.command()
def enroll(
    server: Annotated[str, typer.Option(help="Server URL, e.g. https://fedlora.example.org")],
    token: Annotated[str, typer.Option(help="One-time join token from the federation admin.")],
    name: Annotated[str, typer.Option(help="A name for this client.")] = platform.node()
    or "fedlora-client",
    credentials: Annotated[Path, typer.Option(help="Where to store the API key (mode 0600).")] = (
        DEFAULT_CREDENTIALS_PATH
    ),
) -> None:
    """Exchange a join token for this client's credentials."""
    from fedlora_client._client import FedloraClient, enroll_request

    _friendly(lambda: enroll_request(token, name))  # a bad token fails before torch loads
    client = _friendly(
        lambda: FedloraClient.enroll(
            server, token, name=name, hardware=_hardware(), credentials_path=credentials
        )
    )
    console.print(
        f"[green]enrolled[/] as client {client.credentials.client_id}; "
        f"credentials saved to {credentials.expanduser()} (mode 0600)"
    )


@app.command()
def inspect(
    model_path: Annotated[Path, typer.Argument(help="Local model directory.")],
    task: Annotated[str, typer.Option(help="causal_lm or seq_cls.")] = "causal_lm",
    target: Annotated[
        list[str] | None, typer.Option(help="Target module (repeat), e.g. q_proj.")
    ] = None,
    num_labels: Annotated[int, typer.Option(help="Classes (seq_cls).")] = 2,
) -> None:
    """Print the ModelSpec JSON (fingerprint, module shapes) an admin pastes into a federation."""
    from fedlora_client._model import inspect_model

    targets = target or ["q_proj", "v_proj"]
    spec = _friendly(lambda: inspect_model(model_path, task, targets, num_labels))
    typer.echo(json.dumps(spec.model_dump(mode="json"), indent=2))


def _printer(kind: str, info: dict[str, object]) -> None:
    if kind == "idle":
        return
    shown = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()
    )
    styles = {"refused": "red", "released": "red", "uploaded": "green", "task": "cyan"}
    style = styles.get(kind, "white")
    console.print(f"[{style}]{kind}[/] {shown}", highlight=False)


@app.command()
def run(
    config: Annotated[Path, typer.Option(help="client.toml: model, data, device, budget.")] = Path(
        "client.toml"
    ),
) -> None:
    """Participate: poll for tasks, train with DP, upload, report (Ctrl-C to stop)."""
    from fedlora_client._logs import quiet_dp_accounting
    from fedlora_client._run import run as run_loop

    logging.basicConfig(level=logging.WARNING)
    quiet_dp_accounting()
    try:
        done = _friendly(lambda: run_loop(config, on_event=_printer))
    except KeyboardInterrupt:
        console.print("stopped; a staged upload resumes on the next run")
        raise typer.Exit(130) from None
    console.print(f"[green]done[/]: {done} update(s) accepted")


def main() -> None:
    app()
