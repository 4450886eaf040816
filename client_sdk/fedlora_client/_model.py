"""The local base model: load it (never download), fingerprint it, describe its adapter layout.

Fingerprint (``model_fingerprint``), version 1, so that every client and the admin agree on
"the same base model" without trusting file names or hub revisions:

    sha256( b"fedlora-fingerprint-v1\\n"
            + canonical(config.json) + b"\\n"
            + for each tensor, in sorted name order over all ``*.safetensors`` shards:
                name + b"\\0" + dtype + b"\\0" + shape + b"\\0" + raw tensor bytes )

``canonical`` is ``json.dumps(config, sort_keys=True, separators=(",", ":"))`` after removing
keys that only record where or with what the file was written (``transformers_version``,
``_name_or_path``, ``_commit_hash``). Tensors are read one at a time (streaming: memory holds
one tensor, never the model). Only safetensors checkpoints are fingerprinted; a pickle
checkpoint is refused (re-save it with ``save_pretrained(..., safe_serialization=True)``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from fedlora_client._errors import ConfigError, FingerprintMismatchError, ModelLoadError
from fedlora_client.protocol import PEFT_PREFIX, HardwareProfile, ModelSpec, TaskType

_VOLATILE_CONFIG_KEYS = frozenset({"transformers_version", "_name_or_path", "_commit_hash"})
HEAD_MODULES: tuple[str, ...] = ("classifier", "score")
"""Sequence-classification heads trained as PEFT ``modules_to_save`` (PEFT's default names)."""


def _model_dir(path: str | Path) -> Path:
    directory = Path(path).expanduser()
    if not (directory / "config.json").is_file():
        raise ModelLoadError(
            f"no config.json in {directory}: model_path must be a local Hugging Face model "
            "directory (the SDK never downloads models)"
        )
    return directory


def _safetensors_shards(directory: Path) -> list[Path]:
    shards = sorted(directory.glob("*.safetensors"))
    if not shards:
        raise ModelLoadError(
            f"no *.safetensors weights in {directory}; pickle checkpoints are not read. Re-save "
            "the model with save_pretrained(path, safe_serialization=True)"
        )
    return shards


_FINGERPRINTS: dict[tuple[object, ...], str] = {}


def model_fingerprint(path: str | Path) -> str:
    """sha256 hex of the model's canonical config and its weight tensors (see module doc).

    Cached in-process by the files' (name, size, mtime), so repeated rounds hash once.
    """
    directory = _model_dir(path)
    files = [directory / "config.json", *_safetensors_shards(directory)]
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = _compute_fingerprint(directory)
    return _FINGERPRINTS[key]


def _compute_fingerprint(directory: Path) -> str:
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    for key in _VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    digest = hashlib.sha256(b"fedlora-fingerprint-v1\n")
    digest.update(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    digest.update(b"\n")
    owner: dict[str, Path] = {}
    for shard in _safetensors_shards(directory):
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name in owner:
                    raise ModelLoadError(f"tensor {name!r} appears in {owner[name]} and {shard}")
                owner[name] = shard
    for name in sorted(owner):
        with safe_open(str(owner[name]), framework="pt") as handle:
            tensor = handle.get_tensor(name).contiguous()
        header = f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{list(tensor.shape)}\0"
        digest.update(header.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_fingerprint(path: str | Path, expected: str) -> str:
    """Compute the local fingerprint and raise :class:`FingerprintMismatchError` if it differs."""
    local = model_fingerprint(path)
    if local != expected:
        raise FingerprintMismatchError(local, expected)
    return local


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _auto_class(task_type: TaskType) -> Any:
    import transformers

    if task_type is TaskType.CAUSAL_LM:
        return transformers.AutoModelForCausalLM
    return transformers.AutoModelForSequenceClassification


def load_base_model(
    path: str | Path,
    task_type: TaskType | str,
    *,
    num_labels: int = 2,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Any:
    """Load the local base model for ``task_type`` (``local_files_only``: never downloads).

    Weights missing from the checkpoint (a fresh classification head) are initialised under a
    fixed seed, so every client starts from the same tensors before the plan's start adapter
    overwrites them.
    """
    directory = _model_dir(path)
    task = TaskType(task_type)
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
    if task is TaskType.SEQ_CLS:
        kwargs["num_labels"] = num_labels
    try:
        with _quiet_transformers(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = _auto_class(task).from_pretrained(str(directory), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the model in {directory}: {exc}") from exc
    if task is TaskType.SEQ_CLS and getattr(model.config, "pad_token_id", None) is None:
        tokenizer = load_tokenizer(directory)
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device)


def detect_hardware(device: str = "cpu") -> HardwareProfile:
    """What to tell the server about this client's accelerator (name and memory in GiB)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        return HardwareProfile(accelerator=props.name, memory_gb=props.total_memory / 2**30)
    return HardwareProfile(accelerator="cpu")


def load_tokenizer(path: str | Path) -> Any:
    """The model's tokenizer, with a pad token (the EOS token when the model defines none)."""
    from transformers import AutoTokenizer

    directory = _model_dir(path)
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"no usable tokenizer in {directory}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_model_dir(path: str | Path) -> None:
    """Check, without loading weights, that ``path`` is a model the SDK can train: its
    ``config.json`` loads in transformers, it has safetensors weights and a tokenizer.
    Raises :class:`ModelLoadError` naming the directory and what is missing."""
    from transformers import AutoConfig

    directory = _model_dir(path)
    _safetensors_shards(directory)
    try:
        with _quiet_transformers():
            AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"config.json in {directory} does not load: {exc}") from exc
    load_tokenizer(directory)


def _skeleton(directory: Path, task: TaskType, num_labels: int) -> nn.Module:
    """The model's module tree on the meta device (no weights read, no memory used)."""
    from transformers import AutoConfig

    with _quiet_transformers():
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
        if task is TaskType.SEQ_CLS:
            config.num_labels = num_labels
        with torch.device("meta"):
            model: nn.Module = _auto_class(task).from_config(config)
    return model


def match_linear_modules(model: nn.Module, target_modules: list[str]) -> dict[str, nn.Linear]:
    """Full paths of the ``nn.Linear`` modules PEFT would adapt for ``target_modules``.

    A target matches a module whose path equals it or ends with ``"." + target`` (PEFT's rule).
    """
    found: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if not any(name == t or name.endswith("." + t) for t in target_modules):
            continue
        if not isinstance(module, nn.Linear):
            raise ConfigError(
                f"target module {name!r} is a {type(module).__name__}; fedlora adapts nn.Linear"
            )
        found[name] = module
    if not found:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ConfigError(
            f"no module matches target_modules={target_modules}; linear modules look like: "
            f"{', '.join(linears[:6])}"
        )
    return found


def inspect_model(
    path: str | Path,
    task_type: TaskType | str,
    target_modules: list[str],
    num_labels: int = 2,
) -> ModelSpec:
    """The :class:`ModelSpec` a federation on this model needs (paste it into the admin UI)."""
    directory = _model_dir(path)
    task = TaskType(task_type)
    model = _skeleton(directory, task, num_labels)
    modules = {
        name: (int(layer.out_features), int(layer.in_features))
        for name, layer in match_linear_modules(model, target_modules).items()
    }
    extra: dict[str, list[int]] = {}
    if task is TaskType.SEQ_CLS:
        children = dict(model.named_children())
        for head in HEAD_MODULES:
            if head in children:
                for pname, param in children[head].named_parameters():
                    extra[f"{PEFT_PREFIX}{head}.{pname}"] = list(param.shape)
                break
        else:
            raise ConfigError(f"no classification head named one of {HEAD_MODULES} in the model")
    return ModelSpec(
        fingerprint=model_fingerprint(directory), modules=modules, extra_trainable=extra
    )
