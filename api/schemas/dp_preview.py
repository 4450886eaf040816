"""The DP preview: what a federation's privacy settings do to organizations of a few sizes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedlora_client.protocol import DPMode, DPSettings, LocalTraining, check_tensor_names

Dim = Annotated[int, Field(ge=1, le=10_000_000)]
DatasetSize = Annotated[int, Field(ge=1, le=1_000_000_000)]
MAX_DATASET_SIZES = 12
SizesFrom = Literal["request", "members", "default"]


class ModelShapes(BaseModel):
    """The model's adapted modules and head, as `fedlora-client inspect` prints them (the
    fingerprint is accepted and not used: the preview needs only the shapes)."""

    model_config = ConfigDict(extra="forbid")

    fingerprint: str | None = Field(default=None, max_length=128, description="Not used.")
    modules: dict[str, tuple[Dim, Dim]] = Field(
        min_length=1, description="Adapted module path -> (d_out, d_in)."
    )
    extra_trainable: dict[str, list[Dim]] = Field(
        default_factory=dict, description="Head tensors (PEFT saved key -> shape)."
    )

    @field_validator("modules", "extra_trainable")
    @classmethod
    def _names_are_safe(cls, value: dict[str, object]) -> dict[str, object]:
        return check_tensor_names(value)


class DPPreviewRequest(BaseModel):
    """The fields of a draft federation the preview depends on (the create body's names)."""

    model_config = ConfigDict(extra="forbid")

    model: ModelShapes | None = Field(
        default=None,
        description="The model's shapes; without them noise_to_signal is not computed.",
    )
    global_rank: int = Field(ge=1, le=4096, description="The rank the DP-trained LoRA has.")
    num_rounds: int = Field(ge=1, le=100_000)
    clients_per_round: int = Field(ge=1, le=100_000)
    training: LocalTraining = Field(default_factory=LocalTraining)
    dp: DPSettings
    dataset_sizes: list[DatasetSize] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_DATASET_SIZES,
        description="Organization sizes (examples) to preview; default 500, 5,000 and 50,000.",
    )


class DPPreviewRow(BaseModel):
    """One organization size: its DP schedule and outcome over the whole federation."""

    num_examples: int = Field(description="The organization's training examples.")
    logical_batch: int = Field(
        description="Examples per step (the expected Poisson sample under sample-level DP)."
    )
    steps_per_round: int
    sampling_rate: float = Field(
        description="Fraction of the data in one step (the accountant's rate, sample-level)."
    )
    total_steps: int = Field(description="steps_per_round x num_rounds.")
    noise_multiplier: float = Field(description="sigma: given, or calibrated to target_epsilon.")
    epsilon: float | None = Field(
        description="Epsilon at delta after all rounds (RDP accountant); null: no finite "
        "guarantee (DP off, or no noise)."
    )
    noise_to_signal: float | None = Field(
        description="Expected noise norm over the largest signal norm (see noise_to_signal_basis); "
        "above 1 the noise dominates. Null without the model's shapes."
    )


class DPWarning(BaseModel):
    code: Literal["client_level_few_clients", "noise_dominates", "over_budget", "no_guarantee"]
    message: str


class DPPreviewPublic(BaseModel):
    mode: DPMode
    delta: float
    epsilon_budget: float
    num_rounds: int
    clients_per_round: int
    rank: int
    dp_parameters: int | None = Field(
        description="Parameters clipped and noised (LoRA B, A unless frozen, the head), at rank."
    )
    noise_to_signal_basis: str = Field(description="What noise_to_signal compares, in words.")
    dataset_sizes_from: SizesFrom = Field(
        description="Where the rows' sizes come from: the request, the members' reported "
        "num_examples, or the defaults."
    )
    rows: list[DPPreviewRow]
    warnings: list[DPWarning]
