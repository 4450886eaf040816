"""The wire contract between the fedlora server and its clients.

This module is the single definition of what crosses the network: the training plan a client
receives with each task, the manifest it sends with its update, the adapter tensor naming, and
the client-facing routes. The server (``api/`` and ``worker/``) imports it from here; nothing
here imports torch, FastAPI, SQLAlchemy or Celery, so both sides can depend on it.

Conventions (docs/methods.md, "Conventions"):

* One adapted layer has frozen ``W0`` of shape ``(d_out, d_in)``. LoRA factors are
  ``B`` of shape ``(d_out, r)`` and ``A`` of shape ``(r, d_in)``; the effective update is
  ``s * B @ A`` with ``s = lora_alpha / r`` (or ``lora_alpha / sqrt(r)`` with rsLoRA).
* Every adapter that crosses the wire is a PEFT adapter: safetensors with PEFT's saved key
  names (``base_model.model.<module>.lora_A.weight``) plus, for sequence classification, the
  ``modules_to_save`` tensors (the classifier head) under PEFT's saved names.
* A plan's :class:`LoraSpec` gives the exact ``r`` and ``lora_alpha`` the client builds its
  ``LoraConfig`` with. The server chooses ``lora_alpha`` so that PEFT's scaling equals the scale
  the method needs (for example FSLoRA's ``s * r / k_i``); the client never re-derives it.
* The client uploads its *final* factors (after local training and differential privacy) at the
  plan's rank and scale. The server converts them to effective updates.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PROTOCOL_VERSION = 1

STRATEGY_NAMES: tuple[str, ...] = (
    "fedavg",
    "hetlora",
    "flora",
    "flexlora",
    "fslora",
    "sdflora",
    "prelort",
)

ALLOWED_DTYPES: frozenset[str] = frozenset({"F32", "F16", "BF16"})
MAX_ABS_VALUE = 2.0**20
"""Every uploaded value must be finite with magnitude below this (about 1e6). No trained LoRA
factor or head comes near it; a value that does is a diverged or hostile update, and bounding
it keeps every sum and product of the aggregation far from float32's range (3.4e38). The SDK,
the API and the worker apply the same rule."""
"""safetensors dtype codes accepted in uploads."""

IDEMPOTENCY_HEADER = "Idempotency-Key"
UPLOAD_OFFSET_HEADER = "Upload-Offset"
CONTENT_SHA256_HEADER = "X-Content-SHA256"
API_PREFIX = "/api/v1"


class Routes:
    """Client-facing routes, relative to the server URL. ``{}`` fields are path parameters."""

    ENROLL = f"{API_PREFIX}/enroll"
    """POST :class:`EnrollRequest` -> :class:`EnrollResponse` (no auth; the join token is it)."""
    ME = f"{API_PREFIX}/client/me"
    """GET the calling client; PATCH :class:`HardwareProfile` to report hardware."""
    MEMBERSHIPS = f"{API_PREFIX}/client/memberships"
    """GET the federations this client belongs to: list of :class:`MembershipInfo`."""
    MEMBERSHIP = f"{API_PREFIX}/client/memberships/{{federation_id}}"
    """PUT :class:`MembershipReport`: the client's local model fingerprint (makes it eligible)."""
    NEXT_TASK = f"{API_PREFIX}/client/tasks/next"
    """GET ``?wait=<seconds>`` -> 200 :class:`TaskAssignment` or 204 after the wait."""
    TASK = f"{API_PREFIX}/client/tasks/{{task_id}}"
    """GET the assignment again (same lease)."""
    START_ADAPTER = f"{API_PREFIX}/client/tasks/{{task_id}}/start-adapter"
    """GET the safetensors the client starts training from (streamed; hash in a header)."""
    MERGE_ADAPTER = f"{API_PREFIX}/client/tasks/{{task_id}}/merge-adapter"
    """GET the adapter to merge into the base weights before training (FLoRA only)."""
    UPLOADS = f"{API_PREFIX}/client/tasks/{{task_id}}/uploads"
    """POST :class:`UploadManifest` with an ``Idempotency-Key`` -> :class:`UploadSession`."""
    UPLOAD = f"{API_PREFIX}/client/uploads/{{upload_id}}"
    """HEAD -> ``Upload-Offset``; PATCH a chunk at ``Upload-Offset`` -> :class:`UploadSession`."""
    REPORT = f"{API_PREFIX}/client/tasks/{{task_id}}/report"
    """POST :class:`TaskReport` (evaluation metrics after upload; optional)."""
    RELEASE = f"{API_PREFIX}/client/tasks/{{task_id}}/release"
    """POST :class:`TaskRelease`: give a task back that this client cannot train, with why."""
    GLOBAL_ADAPTER = f"{API_PREFIX}/client/tasks/{{task_id}}/global-adapter"
    """GET the published global adapter the plan names (``plan.global_adapter``), to evaluate."""
    EVALUATION = f"{API_PREFIX}/client/tasks/{{task_id}}/evaluation"
    """POST :class:`GlobalEvaluation`: the global adapter's loss (and accuracy) on local data."""


# --------------------------------------------------------------------------- enums


class TaskType(StrEnum):
    CAUSAL_LM = "causal_lm"
    SEQ_CLS = "seq_cls"


class DPMode(StrEnum):
    """Unit of privacy. ``none`` exists for benchmarks and trusted setups; it promises nothing."""

    SAMPLE = "sample"
    CLIENT = "client"
    NONE = "none"


# --------------------------------------------------------------------------- tensor names

_MODULE_RE = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
PEFT_PREFIX = "base_model.model."


def lora_a_key(module: str) -> str:
    """PEFT's saved key of the A factor (shape ``(r, d_in)``) of ``module``."""
    return f"{PEFT_PREFIX}{module}.lora_A.weight"


def lora_b_key(module: str) -> str:
    """PEFT's saved key of the B factor (shape ``(d_out, r)``) of ``module``."""
    return f"{PEFT_PREFIX}{module}.lora_B.weight"


def is_safe_tensor_name(name: str) -> bool:
    """True for dotted identifiers only: no path separators, '..', spaces or control bytes."""
    return len(name) <= 512 and _MODULE_RE.fullmatch(name) is not None


# --------------------------------------------------------------------------- model spec


def check_tensor_names(value: dict[str, object]) -> dict[str, object]:
    """``value`` unchanged if every key is a safe module or tensor name, else ValueError (a
    pydantic validator of a model's ``modules`` and ``extra_trainable``)."""
    for name in value:
        if not is_safe_tensor_name(name):
            raise ValueError(f"invalid module or tensor name {name!r}: use dotted identifiers")
    return value


class ModelSpec(BaseModel):
    """What every client's base model must be, and the adapter layout it implies.

    ``fedlora-client inspect`` prints this for a local model; the admin pastes it into the
    federation. The server validates uploads against it and builds initial adapters from it.
    """

    model_config = ConfigDict(extra="forbid")

    fingerprint: str = Field(
        description="sha256 hex of the model's config and weights, as computed by the SDK.",
        pattern=r"^[0-9a-f]{64}$",
    )
    modules: dict[str, tuple[int, int]] = Field(
        description="Adapted module path -> (d_out, d_in), e.g. 'bert.encoder.layer.0."
        "attention.self.query': (384, 384).",
        min_length=1,
    )
    extra_trainable: dict[str, list[int]] = Field(
        default_factory=dict,
        description="Non-LoRA trainable tensors (PEFT modules_to_save, e.g. a classification "
        "head) by PEFT saved key -> shape. Every strategy averages them with data weights.",
    )

    @field_validator("modules", "extra_trainable")
    @classmethod
    def _names_are_safe(cls, value: dict[str, object]) -> dict[str, object]:
        return check_tensor_names(value)


def adapter_shapes(model: ModelSpec, rank: int) -> dict[str, tuple[int, ...]]:
    """The tensors (PEFT saved key -> shape) of a rank-``rank`` adapter of ``model``: A and B of
    every adapted module plus the ``extra_trainable`` (head) tensors."""
    shapes: dict[str, tuple[int, ...]] = {}
    for module, (d_out, d_in) in model.modules.items():
        shapes[lora_a_key(module)] = (rank, d_in)
        shapes[lora_b_key(module)] = (d_out, rank)
    for key, shape in model.extra_trainable.items():
        shapes[key] = tuple(shape)
    return shapes


# --------------------------------------------------------------------------- plan parts


class LoraSpec(BaseModel):
    """The LoRA a client builds: ``LoraConfig(r=rank, lora_alpha=lora_alpha, use_rslora=...)``."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(ge=1, le=4096, description="LoRA rank r.")
    lora_alpha: float = Field(gt=0, description="PEFT lora_alpha; scaling = alpha / r.")
    use_rslora: bool = Field(default=False, description="rsLoRA: scaling = alpha / sqrt(r).")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


class ArtifactRef(BaseModel):
    """A server-side adapter file the client downloads and checks by hash."""

    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    lora: LoraSpec = Field(description="The rank and scaling the file's factors are stored at.")


COSINE_FLOOR = 0.1
"""The cosine schedule's last-round rate, as a fraction of the peak rate."""


def scheduled_rate(
    peak: float,
    schedule: Literal["constant", "cosine"],
    *,
    round_number: int,
    total_rounds: int,
    warmup_rounds: int = 0,
) -> float:
    """The rate of round ``round_number`` (1-based) of ``total_rounds`` under ``schedule``:
    ``constant``, or ``cosine`` (linear warm-up over ``warmup_rounds``, then cosine decay from
    ``peak`` to ``COSINE_FLOOR * peak`` at the last round)."""
    if schedule == "constant":
        return peak
    warmup = min(warmup_rounds, max(0, total_rounds - 1))
    if round_number <= warmup:
        return peak * round_number / (warmup + 1)
    span = max(1, total_rounds - warmup - 1)
    progress = min(1.0, (round_number - warmup - 1) / span)
    floor = COSINE_FLOOR * peak
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LocalTraining(BaseModel):
    """Local optimisation settings, identical for every client of a federation.

    The defaults are the platform's recipe, chosen by measurement (``bench/quality.py``,
    docs/benchmarks.md): clients take a few plain SGD steps with logit adjustment, and the
    server's adaptive step (FedYogi, ``ServerOptimizerParams``) turns the average of their
    changes into the update. Client SGD keeps each client's change proportional to its
    gradient, so the data-weighted average is the average gradient; client AdamW rescales every
    client's steps to full size whatever its gradient, and under label skew the clients then
    vote on the decision boundary by their weights. Strategies that cannot take an adaptive
    server step (FlexLoRA, SDFLoRA, FLoRA) default to AdamW instead (see
    ``worker.strategies.params.resolve_training``); a field set explicitly is always kept.
    """

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(default=5, ge=1, le=100_000, description="Optimizer steps per round.")
    batch_size: int = Field(default=32, ge=1, le=4096, description="Examples per step.")
    learning_rate: float = Field(
        default=0.03,
        gt=0,
        le=10,
        description="Client learning rate (the peak of lr_schedule). SGD's 0.03 keeps local "
        "steps small; the server's adaptive step sets the pace. AdamW: about 1e-3.",
    )
    optimizer: Literal["sgd", "adamw"] = Field(
        default="sgd",
        description="Client optimizer: 'sgd' (with the server's adaptive step) or 'adamw'.",
    )
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    max_seq_len: int = Field(default=128, ge=8, le=32_768, description="Token truncation.")
    lora_alpha: float = Field(
        default=16.0,
        gt=0,
        le=65_536,
        description="LoRA alpha of the federation's scale convention s(r) = alpha / r "
        "(or alpha / sqrt(r) with rsLoRA); strategies derive each client's scale from it.",
    )
    use_rslora: bool = Field(default=False, description="rsLoRA scaling alpha / sqrt(r).")
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    physical_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Examples per forward/backward pass: a step's (logical) batch is split "
        "into micro-batches of at most this many examples, grouped by length, and their "
        "gradients are summed, so the step is the same as one pass over the whole batch. "
        "Empty: the whole batch in one pass (lower it when the batch does not fit in memory).",
    )
    label_balance: Literal["logit_adjustment", "none"] = Field(
        default="logit_adjustment",
        description="Classification only. 'logit_adjustment': each client trains on "
        "logits + log(its own label prior) (balanced softmax / FedLC-style calibration; the "
        "prior comes from the client's label counts with add-one smoothing and never leaves "
        "the client), so a client that holds mostly one label cannot pull the shared decision "
        "boundary towards it. 'none': plain cross-entropy.",
    )
    threshold_calibration: Literal["federated", "none"] = Field(
        default="federated",
        description="Two-label classification. 'federated': each client also reports how the "
        "logit margins of its held-out evaluation rows fall into fixed bins, and every round "
        "the server moves the global head's bias to the threshold that maximizes the "
        "clients' pooled held-out accuracy of the previous global adapter "
        "(fedlora_client.calibration). Label skew and DP noise leave a federation that ranks "
        "well with its threshold on one side; this puts it back. 'none': the strategy's "
        "aggregate as is.",
    )
    proximal_mu: float = Field(
        default=0.0,
        ge=0.0,
        le=100.0,
        description="FedProx: adds mu/2 ||w - w_start||^2 over the trained tensors to the "
        "local loss (0 disables).",
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="cosine",
        description="Client learning rate over the federation's rounds: 'constant', or "
        "'cosine' (linear warm-up over warmup_rounds, then cosine decay to 10% of "
        "learning_rate at the last round). The server applies it: each plan carries its "
        "round's rate in learning_rate.",
    )
    warmup_rounds: int = Field(
        default=0, ge=0, le=10_000, description="Rounds of linear learning-rate warm-up."
    )
    train_lora_a: bool = Field(
        default=True,
        description="Train LoRA's A factors. False freezes them (FFA-LoRA): clients train and "
        "change only B (and the head), which makes averaging exact and halves the noised "
        "dimensions under DP; the DP recipe freezes A whatever this says.",
    )

    def round_learning_rate(self, round_number: int, total_rounds: int) -> float:
        """The client learning rate of round ``round_number`` (1-based) of ``total_rounds``."""
        return scheduled_rate(
            self.learning_rate,
            self.lr_schedule,
            round_number=round_number,
            total_rounds=total_rounds,
            warmup_rounds=self.warmup_rounds,
        )


DP_LOGICAL_BATCH = 512
"""The DP recipe's smallest logical batch (Poisson-sampled; all of a smaller dataset)."""
DP_MAX_LOGICAL_BATCH = 2048
"""The DP recipe's largest logical batch (bounds a large organization's compute per step)."""
DP_SAMPLING_RATE = 0.5
"""The DP recipe's sampling rate between those bounds: the logical batch is N / 2."""


def dp_recipe_batch(n: int) -> int:
    """The DP recipe's logical batch for an organization of ``n`` examples: ``n / 2``, at least
    ``DP_LOGICAL_BATCH`` (all of a smaller dataset) and at most ``DP_MAX_LOGICAL_BATCH``.

    Noise per step falls as 1 / batch, while the accountant's sigma grows more slowly than the
    batch as long as the sampling rate q is below about 1/2 (subsampling amplifies privacy): at
    epsilon 8 over 20 steps, an organization of 16,742 examples gets sigma 0.54 at a batch of
    512 and 0.79 at 2048, so a step's signal-to-noise grows 2.7x. Past q = 1/2, doubling the
    batch buys a fifth to a quarter more for twice the compute, so a small organization is not made
    to compute for little (measured: docs/benchmarks.md)."""
    if n <= DP_LOGICAL_BATCH:
        return max(1, n)
    return min(DP_MAX_LOGICAL_BATCH, max(DP_LOGICAL_BATCH, round(n * DP_SAMPLING_RATE)))


DP_STEPS_PER_ROUND = 2
"""The DP recipe's DP-SGD steps per round."""


class DPSettings(BaseModel):
    """A federation's differential-privacy settings (validated at creation).

    With ``recipe='auto'`` (the default) sample-level DP-SGD does not use the local training's
    batch and steps: each organization takes ``DP_STEPS_PER_ROUND`` steps per round of a
    Poisson-sampled logical batch of ``dp_recipe_batch(N)`` of its ``N`` examples (N / 2
    within [512, 2048]; ``logical_batch`` and ``steps_per_round`` override them), split into
    micro-batches of ``training.physical_batch_size`` (32 when unset), with LoRA's
    A factors frozen (FFA-LoRA: half the noised dimensions, exact averaging of B). Noise per
    step falls as 1/batch while the accountant's sigma grows only slowly with the sampling rate,
    so a few large batches keep far more signal than many small ones at the same epsilon.
    ``recipe='manual'`` uses ``training.batch_size`` and ``steps`` as given.

    Each example's gradient is clipped per group (``clipping='grouped'``): the LoRA factors to
    ``clip_norm`` and the classification head to ``head_clip_norm``, each group's noise scaled
    to its own norm (the Gaussian mechanism on the groups rescaled to norm 1 each, so the
    accountant's guarantee holds). The head's per-example gradients are ten times the factors'
    or more; one shared norm either clips the head hard (a biased step: under label skew the
    minority class's large gradients are cut most, and the boundary drifts to the majority) or
    drowns the factors in noise sized for the head. The defaults sit just above most
    per-example norms measured on MiniLM (factors: median 0.07; head: median 1.1, at most about
    3), so clipping rarely cuts; each round's metrics report the clipped fractions
    (``dp_clipped_fraction``, ``dp_clipped_fraction_head``) to tune them for another model:
    near 1 the step is biased, near 0 the noise is larger than needed. Measurements:
    docs/benchmarks.md.
    """

    model_config = ConfigDict(extra="forbid")

    mode: DPMode = Field(default=DPMode.SAMPLE, description="Unit of privacy.")
    clip_norm: float = Field(
        default=0.1,
        gt=0,
        description="Clipping norm C of each example's gradient: of the LoRA factors with "
        "grouped clipping, of every trained tensor with joint clipping.",
    )
    head_clip_norm: float | None = Field(
        default=3.0,
        gt=0,
        description="Grouped clipping: the classification head's own clipping norm (its "
        "per-example gradients are ten times the LoRA factors' or more); empty: clip_norm.",
    )
    clipping: Literal["grouped", "joint"] = Field(
        default="grouped",
        description="Sample-level DP: 'grouped' clips the LoRA factors' per-example gradients "
        "to clip_norm and the head's to head_clip_norm (noise sigma C_g sqrt(2) in each: the "
        "same guarantee); 'joint' clips all together to clip_norm.",
    )
    recipe: Literal["auto", "manual"] = Field(
        default="auto",
        description="'auto': the DP recipe (large logical batches, few steps, A frozen; see the "
        "class description); 'manual': training.batch_size and steps as given.",
    )
    logical_batch: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="The 'auto' recipe's expected logical batch (Poisson-sampled; all of a "
        "smaller dataset); empty: the recipe's rule, N / 2 of an organization's N examples "
        "within [512, 2048] (all of a smaller dataset).",
    )
    steps_per_round: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="The 'auto' recipe's DP-SGD steps per round; empty: DP_STEPS_PER_ROUND.",
    )
    noise_multiplier: float | None = Field(
        default=None, ge=0, description="sigma; leave empty to calibrate from target_epsilon."
    )
    target_epsilon: float | None = Field(
        default=None, gt=0, description="Epsilon to reach over the whole run (calibrates sigma)."
    )
    delta: float = Field(default=1e-5, gt=0, lt=1, description="The delta of (epsilon, delta)-DP.")
    epsilon_budget: float = Field(
        default=10.0, gt=0, description="Per-client cap; clients past it are not selected."
    )

    @model_validator(mode="after")
    def _noise_is_defined(self) -> DPSettings:
        if self.mode is not DPMode.NONE and (self.noise_multiplier is None) == (
            self.target_epsilon is None
        ):
            raise ValueError("set exactly one of noise_multiplier and target_epsilon")
        return self


class DPPlan(DPSettings):
    """DP parameters of one task: the federation's settings plus what calibration needs."""

    planned_rounds: int = Field(ge=1, description="Rounds the client may take part in.")


def local_schedule(training: LocalTraining, dp: DPSettings, n: int) -> tuple[int, int]:
    """``(logical batch, steps)`` of one round for an organization of ``n`` examples: the DP
    recipe's under sample-level DP with ``recipe='auto'``, else the training's own. The SDK
    trains and accounts with it; the server previews epsilon and noise with it."""
    if dp.mode is DPMode.SAMPLE and dp.recipe == "auto":
        batch = min(n, dp.logical_batch) if dp.logical_batch else dp_recipe_batch(n)
        return max(1, batch), dp.steps_per_round or DP_STEPS_PER_ROUND
    return training.batch_size, training.steps


def freezes_lora_a(training: LocalTraining, dp: DPSettings) -> bool:
    """Whether clients keep LoRA's A factors fixed this round (FFA-LoRA)."""
    return not training.train_lora_a or (dp.mode is DPMode.SAMPLE and dp.recipe == "auto")


class SketchPlan(BaseModel):
    """FSLoRA: this round's index set per module into the global rank-r factors."""

    model_config = ConfigDict(extra="forbid")

    global_rank: int = Field(ge=1)
    indices: dict[str, list[int]] = Field(description="Module -> sorted k_i indices in [0, r).")


class PrivateModule(BaseModel):
    """SDFLoRA: a private LoRA kept on the client's disk across rounds, never uploaded."""

    model_config = ConfigDict(extra="forbid")

    lora: LoraSpec


class TailPenalty(BaseModel):
    """HetLoRA's self-pruning regularizer, added to the client's local loss every step:
    ``weight * sum_modules ||B[:, keep:]||_F ||A[keep:, :]||_F`` (the norm of the rank tail the
    server would prune next). It depends on no data, so it leaves a DP guarantee unchanged."""

    model_config = ConfigDict(extra="forbid")

    keep: int = Field(ge=1, le=4096, description="Rank components kept; the tail starts here.")
    weight: float = Field(gt=0, le=1e3, description="lambda, the regularizer's weight.")


class TrainingPlan(BaseModel):
    """What one selected client trains in one round. Produced by a strategy's planning hook."""

    model_config = ConfigDict(extra="forbid")

    protocol_version: int = PROTOCOL_VERSION
    strategy: str = Field(description="Registered strategy name.")
    task_type: TaskType
    base_model_id: str
    model: ModelSpec
    lora: LoraSpec = Field(description="The LoRA the client trains and uploads.")
    rank_budget: int | None = Field(
        default=None,
        ge=1,
        description="The client's rank budget this plan was made for (SDFLoRA splits it into "
        "shared + private; other methods train min(budget, global rank)).",
    )
    start: ArtifactRef = Field(description="Factors (and head) the trained LoRA starts from.")
    merge: ArtifactRef | None = Field(
        default=None,
        description="FLoRA: merge this adapter into the base weights before training; the "
        "trained LoRA then starts fresh from `start`.",
    )
    private: PrivateModule | None = Field(default=None, description="SDFLoRA private module.")
    nested_truncations: list[int] = Field(
        default_factory=list,
        description="PreLort: truncation levels b sampled uniformly per step (includes rank).",
    )
    sketch: SketchPlan | None = Field(default=None, description="FSLoRA index sets.")
    tail_penalty: TailPenalty | None = Field(
        default=None, description="HetLoRA self-pruning: the tail-norm regularizer."
    )
    training: LocalTraining
    dp: DPPlan
    seed: int = Field(ge=0, description="Seed for local sampling and noise.")
    global_adapter: ArtifactRef | None = Field(
        default=None,
        description="Federated evaluation: the latest published global adapter (PEFT keys, "
        "with the head), at its own rank and scale. The client evaluates base + this adapter "
        "on its evaluation split before training and posts a GlobalEvaluation. None in round "
        "1 (nothing is published yet).",
    )
    evaluate_only: bool = Field(
        default=False,
        description="The evaluation pass after the last round: evaluate `global_adapter` and "
        "post the result; train nothing, upload nothing, spend no epsilon.",
    )

    @model_validator(mode="after")
    def _tail_within_rank(self) -> TrainingPlan:
        if self.tail_penalty is not None and self.tail_penalty.keep >= self.lora.rank:
            raise ValueError(
                f"tail_penalty.keep ({self.tail_penalty.keep}) must be below lora.rank "
                f"({self.lora.rank})"
            )
        if self.evaluate_only and self.global_adapter is None:
            raise ValueError("an evaluate_only plan must name the global_adapter to evaluate")
        return self

    def upload_shapes(self) -> dict[str, tuple[int, ...]]:
        """Exactly the tensors (PEFT saved key -> shape) an upload for this plan must hold."""
        return adapter_shapes(self.model, self.lora.rank)


# --------------------------------------------------------------------------- messages


class HardwareProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accelerator: str = Field(default="cpu", max_length=128, description="e.g. 'cpu', 'NVIDIA A10'.")
    memory_gb: float = Field(default=0, ge=0, le=1e6, description="Accelerator (or host) memory.")


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    join_token: str = Field(min_length=16, max_length=256)
    name: str = Field(min_length=1, max_length=128, description="A name for this client.")
    hardware: HardwareProfile = Field(default_factory=HardwareProfile)


class EnrollResponse(BaseModel):
    client_id: str
    organization_id: str
    api_key: str = Field(description="Shown once; send as 'Authorization: Bearer <key>'.")


class MembershipInfo(BaseModel):
    federation_id: str
    federation_name: str
    status: str
    base_model_id: str
    task_type: TaskType
    model: ModelSpec
    rank_budget: int
    epsilon_budget: float
    epsilon_spent: float
    fingerprint_reported: str | None = None


class MembershipReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fingerprint: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="The SDK's fingerprint of the local base model."
    )


class TaskAssignment(BaseModel):
    task_id: str
    federation_id: str
    round_number: int
    lease_expires_at: str = Field(description="ISO-8601; upload before it or lose the task.")
    deadline_at: str | None = None
    plan: TrainingPlan


NonNegFloat = Annotated[float, Field(ge=0)]


class UploadManifest(BaseModel):
    """Sent with every update. The server checks each field against the task and the file."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    base_model_fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    lora: LoraSpec
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the safetensors body.")
    size: int = Field(gt=0, description="Bytes of the safetensors body.")
    num_examples: int = Field(
        ge=1,
        le=1_000_000_000,
        description="Local dataset size (aggregation weight); at most 1e9 (the column is 32-bit).",
    )
    metrics: dict[str, float] = Field(default_factory=dict, description="e.g. train_loss.")
    epsilon_spent: NonNegFloat = Field(
        default=0.0, description="Epsilon this task adds for the client, from the accountant."
    )


class UploadSession(BaseModel):
    upload_id: str
    offset: int = Field(description="Bytes received so far; resume from here.")
    size: int
    status: Literal["receiving", "accepted"]
    update_id: str | None = None


class TaskReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metrics: dict[str, float] = Field(default_factory=dict)


class GlobalEvaluation(BaseModel):
    """A client's evaluation of the global adapter its task names, on its own evaluation split.

    Sent in the clear: evaluation metrics are not covered by the DP guarantee. The server
    aggregates them over clients, weighted by ``num_examples``, into the adapter's federated
    score.
    """

    model_config = ConfigDict(extra="forbid")

    adapter_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="sha256 of the adapter evaluated (the plan's)."
    )
    num_examples: int = Field(ge=1, le=100_000_000, description="Evaluation examples.")
    loss: float = Field(
        ge=0, allow_inf_nan=False, description="Mean loss (causal LM: of per-token mean losses)."
    )
    accuracy: float | None = Field(
        default=None, ge=0, le=1, allow_inf_nan=False, description="Classification only."
    )
    margin_histogram: list[list[int]] | None = Field(
        default=None,
        description="Two-label classification: counts of the evaluation rows' logit margins "
        "(logit[1] - logit[0]) per bin of fedlora_client.calibration.MARGIN_EDGES, one row "
        "per true label; the server calibrates the global decision threshold from them.",
    )

    @field_validator("margin_histogram")
    @classmethod
    def _histogram_shape(cls, value: list[list[int]] | None) -> list[list[int]] | None:
        if value is not None:
            from fedlora_client.calibration import check_histogram

            check_histogram(value)
        return value

    @model_validator(mode="after")
    def _histogram_counts_examples(self) -> GlobalEvaluation:
        if self.margin_histogram is not None:
            total = sum(map(sum, self.margin_histogram))
            if total != self.num_examples:
                raise ValueError(
                    f"margin_histogram counts {total} rows but num_examples is "
                    f"{self.num_examples}: count every evaluation row once"
                )
        return self


class TaskRelease(BaseModel):
    """Why a task is given back before its upload; the federation admin sees the reason."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        min_length=1,
        max_length=1024,
        description="What went wrong, e.g. 'DataColumnError: column 'label' not found'.",
    )
