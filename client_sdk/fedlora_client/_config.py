"""``client.toml``: where the model and data are, the device, and the local privacy cap.

Example::

    credentials_path = "~/.config/fedlora/credentials.json"
    state_dir = "~/.cache/fedlora"        # upload sessions, privacy ledger, SDFLoRA private modules

    [model]
    path = "/models/all-MiniLM-L6-v2"     # a local Hugging Face directory (never downloaded)
    device = "cuda"                       # or "cpu"

    [data]
    path = "train.jsonl"                  # .jsonl, .csv or .tsv
    # eval_path = "dev.jsonl"             # else 10% of path is held out (eval_fraction)
    text_field = "text"
    label_field = "label"

    [privacy]
    epsilon_budget = 8.0                  # refuse tasks past this (and past the federation's cap)
    accountant = "rdp"                    # or "pld"

    [run]
    wait_seconds = 30
    max_rounds = 0                        # 0: keep participating
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedlora_client._credentials import DEFAULT_CREDENTIALS_PATH
from fedlora_client._data import DataFields
from fedlora_client._errors import ConfigError


class ModelSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="Local directory of the base model (config.json + weights).")
    device: str = Field(default="cpu", description="torch device: 'cpu', 'cuda', 'cuda:1'.")


class DataSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="Training data: .jsonl, .csv or .tsv.")
    eval_path: Path | None = Field(
        default=None, description="Optional local evaluation data, same columns; metrics are "
        "reported in the clear (not covered by DP). Without it, eval_fraction of the data "
        "file is held out for evaluation and never trained on.",
    )  # fmt: skip
    eval_fraction: float = Field(
        default=0.1, ge=0, le=0.5, description="Without eval_path: the share of the data file "
        "held out (by a hash of each row, the same rows every round) to evaluate the global "
        "model on; 0 holds out nothing (and reports no federated evaluation).",
    )  # fmt: skip
    eval_max_examples: int = Field(
        default=1000, ge=1, le=1_000_000, description="At most this many held-out rows.",
    )  # fmt: skip
    text_field: str = Field(default="text", description="Column with the input text.")
    label_field: str = Field(default="label", description="Column with the class label.")
    prompt_field: str = Field(default="prompt", description="Causal LM: prompt column.")
    response_field: str = Field(default="response", description="Causal LM: response column.")
    label_names: list[str] | None = Field(
        default=None, description="String labels in id order (same list on every client)."
    )

    def fields(self) -> DataFields:
        return DataFields(
            self.text_field, self.label_field, self.prompt_field, self.response_field,
            self.label_names,
        )  # fmt: skip


class PrivacySection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epsilon_budget: float | None = Field(
        default=None, gt=0, description="Local epsilon cap; the stricter of it and the server's."
    )
    accountant: Literal["rdp", "pld"] = Field(default="rdp", description="dp-accounting method.")


class RunSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wait_seconds: float = Field(default=30, ge=0, le=600, description="Long-poll duration.")
    max_rounds: int = Field(default=0, ge=0, description="Stop after this many (0: never).")
    stop_when_idle: bool = Field(default=False, description="Stop when no task is waiting.")


class ClientConfig(BaseModel):
    """The whole ``client.toml``; every field is described, bad values name the field."""

    model_config = ConfigDict(extra="forbid")

    credentials_path: Path = DEFAULT_CREDENTIALS_PATH
    state_dir: Path = Path("~/.cache/fedlora")
    model: ModelSection
    data: DataSection
    privacy: PrivacySection = Field(default_factory=PrivacySection)
    run: RunSection = Field(default_factory=RunSection)

    @classmethod
    def load(cls, path: str | Path) -> ClientConfig:
        source = Path(path).expanduser()
        if not source.is_file():
            raise ConfigError(f"config file {source} not found (see `fedlora-client run --help`)")
        try:
            raw = tomllib.loads(source.read_text(encoding="utf-8"))
            config = cls.model_validate(raw)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML ({exc})") from exc
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"{source}: {problems}") from exc
        base = source.parent
        # relative paths are relative to the config file, not to the working directory
        config.model.path = base / config.model.path.expanduser()
        config.data.path = base / config.data.path.expanduser()
        if config.data.eval_path is not None:
            config.data.eval_path = base / config.data.eval_path.expanduser()
        config.state_dir = base / config.state_dir.expanduser()
        config.credentials_path = base / config.credentials_path.expanduser()
        return config
