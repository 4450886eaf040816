"""The request body of ``fedlora federation create``, from options and ``inspect``'s output.

``fedlora-client inspect`` prints a ModelSpec as JSON (fingerprint, adapted modules and their
shapes, and a classification head's tensors for ``seq_cls``). The admin passes that output as
is: a file, ``-`` for stdin, or the text itself; stray lines around the JSON object (a pasted
prompt, a log line) are ignored. It is validated here with the wire contract's own model, so
a wrong or truncated paste is refused with the field to fix before anything is sent.
"""

from __future__ import annotations

import json
import sys
from typing import Any

INSPECT = "fedlora-client inspect MODEL_DIR --task seq_cls|causal_lm --target MODULE"


class SpecError(ValueError):
    """The model spec or another option cannot make a federation; says what to change."""


def _json_object(text: str, where: str) -> dict[str, Any]:
    candidates = [text]
    first, last = text.find("{"), text.rfind("}")
    if 0 <= first < last:
        candidates.append(text[first : last + 1])  # the object inside a pasted terminal
    error: json.JSONDecodeError | None = None
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError as exc:
            error = error or exc
            continue
        if isinstance(value, dict):
            return value
    reason = f"{error.msg} at line {error.lineno}" if error else "no JSON object in it"
    raise SpecError(f"--model-spec {where}: not the JSON `{INSPECT}` prints ({reason})")


def read_model_spec(source: str) -> dict[str, Any]:
    """The validated ModelSpec (as JSON) from a file, ``-`` (stdin) or the JSON text."""
    from pydantic import ValidationError

    from fedlora_client.protocol import ModelSpec  # torch-free

    if source == "-":
        text, where = sys.stdin.read(), "(stdin)"
    elif source.lstrip().startswith("{"):
        text, where = source, "(text)"
    else:
        from pathlib import Path

        path = Path(source).expanduser()
        if not path.is_file():
            raise SpecError(
                f"--model-spec {source}: no such file; save the output of `{INSPECT}` there, "
                "or pass '-' to read it from stdin"
            )
        text, where = path.read_text(encoding="utf-8"), str(path)
    raw = _json_object(text, where)
    if "fingerprint" not in raw and isinstance(raw.get("model"), dict):
        raw = raw["model"]  # a whole federation body (or a federation's JSON) pasted
    try:
        spec = ModelSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or '(spec)'}: {e['msg']}" for e in exc.errors()
        )
        raise SpecError(
            f"--model-spec {where} is not a valid model spec ({problems}); pass exactly what "
            f"`{INSPECT}` prints"
        ) from None
    return spec.model_dump(mode="json")


def _settings(pairs: list[str], option: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is read as JSON (numbers, true, lists) or else kept as text."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"{option} {pair!r}: write KEY=VALUE, e.g. {option} steps=20")
        try:
            result[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            result[key.strip()] = value
    return result


def _task_type(spec: dict[str, Any], given: str | None) -> str:
    has_head = bool(spec.get("extra_trainable"))
    if given is None:
        return "seq_cls" if has_head else "causal_lm"
    if given == "seq_cls" and not has_head:
        raise SpecError(
            "--task-type seq_cls, but the model spec lists no classification head "
            "(extra_trainable is empty), so the head would never be shared: run "
            "`fedlora-client inspect MODEL_DIR --task seq_cls ...` and pass that output"
        )
    if given == "causal_lm" and has_head:
        raise SpecError(
            "--task-type causal_lm, but the model spec lists a classification head "
            "(it was made with `inspect --task seq_cls`): inspect again with --task causal_lm"
        )
    return given


def federation_body(
    start: dict[str, Any],
    *,
    spec: dict[str, Any] | None,
    dp_mode: str | None,
    dp_values: dict[str, float | None],
    strategy_params: list[str],
    training: list[str],
    **fields: Any,
) -> dict[str, Any]:
    """POST /api/v1/federations' body: ``start`` (a ``--body`` file) updated by the options."""
    body = dict(start)
    if spec is not None:
        body["model"] = spec
    model = body.get("model")
    if not isinstance(model, dict):
        raise SpecError(f"--model-spec is required: pass what `{INSPECT}` printed")
    body["task_type"] = _task_type(model, fields.pop("task_type") or body.get("task_type"))
    for key, value in fields.items():
        if value is not None:
            body[key] = value
    if not body.get("target_modules"):
        body["target_modules"] = sorted({m.rsplit(".", 1)[-1] for m in model.get("modules", {})})
    body.setdefault("min_clients", body.get("clients_per_round"))
    body["strategy_params"] = {**body.get("strategy_params", {}),
                               **_settings(strategy_params, "--strategy-param")}  # fmt: skip
    body["training"] = {**body.get("training", {}), **_settings(training, "--training")}
    dp: dict[str, Any] = dict(body.get("dp") or {})
    if dp_mode is not None:
        dp["mode"] = dp_mode
    dp.update({k: v for k, v in dp_values.items() if v is not None})
    if "mode" not in dp:
        raise SpecError(
            "--dp is required: none, sample (per-example DP during training) or client "
            "(per-update DP); with sample or client, also --target-epsilon or --noise-multiplier"
        )
    if dp["mode"] == "none":
        noisy = [k for k in ("target_epsilon", "noise_multiplier") if dp.get(k) is not None]
        if noisy:
            raise SpecError(f"--dp none takes no --{noisy[0].replace('_', '-')}; drop it")
    elif (dp.get("target_epsilon") is None) == (dp.get("noise_multiplier") is None):
        raise SpecError(
            f"--dp {dp['mode']} needs exactly one of --target-epsilon (the noise is calibrated "
            "to reach it over the run) and --noise-multiplier"
        )
    body["dp"] = dp
    missing = [
        f"--{k.replace('_', '-')}"
        for k in ("name", "base_model_id", "global_rank", "num_rounds", "clients_per_round")
        if body.get(k) in (None, "")
    ]
    if missing:
        hint = {"--num-rounds": "--rounds"}
        raise SpecError(f"missing {', '.join(hint.get(m, m) for m in missing)}")
    body.setdefault("round_deadline_seconds", 1800)
    body.setdefault("description", "")
    return body
