"""The DP preview in the ``fedlora`` admin commands: what a federation's privacy settings do to
organizations of a few sizes (batch, steps, sigma, epsilon, noise-to-signal) and the warnings
to read before starting it, as the API's ``dp-preview`` routes compute them.

``federation create`` (and its ``--dry-run``) previews the draft it is about to send;
``federation dp-preview`` previews an existing federation. Nothing here imports torch.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

PREVIEW_FIELDS = ("global_rank", "num_rounds", "clients_per_round", "training", "dp")
"""The create body's fields the preview reads (besides the model's shapes)."""
MODEL_FIELDS = ("fingerprint", "modules", "extra_trainable")

DEFAULT_SIZES = "500, 5,000 and 50,000"
"""The server's default sizes, for help texts (``fedlora_client.dp_preview`` has them, but
importing it loads the accountant, seconds of start-up for every command)."""

MODES = {"sample": "sample-level DP", "client": "client-level DP", "none": "DP off"}
SIZES_FROM = {
    "request": "the sizes asked for",
    "members": "the members' reported sizes",
    "default": "default sizes",
}


def preview_request(body: dict[str, Any], sizes: list[int] | None) -> dict[str, Any]:
    """``POST /federations/dp-preview``'s body for a ``POST /federations`` body."""
    request = {k: body[k] for k in PREVIEW_FIELDS if k in body}
    model = body.get("model")
    if isinstance(model, dict):
        request["model"] = {k: model[k] for k in MODEL_FIELDS if k in model}
    if sizes:
        request["dataset_sizes"] = sizes
    return request


def _number(value: float | None, missing: str = "—") -> str:
    return missing if value is None else f"{value:.3g}"


def _examples(n: int) -> str:
    return f"{n:,} examples"


def render(preview: dict[str, Any]) -> RenderableType:
    """The preview as a heading, a table with one row per organization size, a note on what
    noise-to-signal compares, and the warnings (DP off: the heading and the warning only)."""
    mode = str(preview["mode"])
    count = int(preview["clients_per_round"])
    params = preview.get("dp_parameters")
    heading = Text.assemble(
        ("DP preview", "bold"),
        f": {MODES.get(mode, mode)}, {preview['num_rounds']} rounds, {count} "
        f"organization{'s' if count != 1 else ''} per round, rank {preview['rank']}",
        f", {params:,} noised parameters" if params is not None and mode != "none" else "",
    )
    parts: list[RenderableType] = [heading]
    if mode != "none":
        budget = float(preview["epsilon_budget"])
        parts.append(
            Text(
                f"ε at δ={preview['delta']:g} after all rounds (budget {budget:g}), for "
                f"{SIZES_FROM.get(str(preview['dataset_sizes_from']), 'these sizes')}:",
                style="dim",
            )
        )
        table = Table(show_edge=False, pad_edge=False)
        for column in ("organization size", "batch", "steps/round", "σ", "ε", "noise-to-signal"):
            table.add_column(column, justify="left" if column == "organization size" else "right")
        for row in preview["rows"]:
            epsilon, ratio = row.get("epsilon"), row.get("noise_to_signal")
            over = epsilon is None or epsilon > budget  # no guarantee, or past the budget
            table.add_row(
                _examples(int(row["num_examples"])),
                f"{int(row['logical_batch']):,}",
                str(row["steps_per_round"]),
                _number(float(row["noise_multiplier"])),
                Text(_number(epsilon, "∞"), style="red" if over else ""),
                Text(_number(ratio), style="red" if ratio is not None and ratio > 1 else ""),
            )
        parts.append(table)
        if params is None:
            note = "noise-to-signal: not computed without the model's shapes"
        else:
            note = (
                f"noise-to-signal: {preview['noise_to_signal_basis']}; above 1 the noise dominates"
            )
        parts.append(Text(note, style="dim"))
    for warning in preview["warnings"]:
        parts.append(Text.assemble(("warning ", "bold yellow"), str(warning["message"])))
    return Group(*parts)
