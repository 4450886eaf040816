"""Per-strategy parameters: torch-free pydantic models the API validates federations with.

The API imports this module (never the strategy modules, which import torch) to validate a
federation's ``strategy_params`` and to publish their JSON schemas in OpenAPI. Every field has
a description; bad values fail at construction with a message that names the field.

``STRATEGY_PARAMS[name].model_validate(raw)`` validates the stored parameters of a federation
whose strategy is ``name``; ``STRATEGY_DESCRIPTIONS[name]`` is a one-line description for the
CLI and the dashboard. Both are keyed by :data:`fedlora_client.protocol.STRATEGY_NAMES`.

Shared conventions (docs/methods.md#conventions): aggregation weights are data-size
proportional unless a strategy's ``weighting`` says ``uniform``; every strategy aggregates
effective updates ``s_i B_i A_i``; the LoRA scale comes from the federation's ``lora_alpha`` /
``use_rslora``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedlora_client.protocol import STRATEGY_NAMES, LocalTraining

Weighting = Literal["num_examples", "uniform"]

_WEIGHTING_DESCRIPTION = (
    "Aggregation weights p_i: 'num_examples' (data-size proportional, the default of "
    "docs/methods.md#conventions) or 'uniform' (1/K)."
)


class StrategyParams(BaseModel):
    """Base of every strategy's parameters: unknown fields are rejected, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_RANK_NORMALIZATION = (
    "Rank-aware normalization: average each rank component (column j of B, row j of A) over "
    "the clients that hold it (r_i > j), instead of zero-padding the others, which dilutes "
    "components only high-rank clients hold by the weight of those that lack them, every round."
)


class FedAvgParams(StrategyParams):
    """FedIT: average A and B separately (homogeneous ranks; the baseline)."""

    weighting: Weighting = Field(default="num_examples", description=_WEIGHTING_DESCRIPTION)
    rank_normalization: bool = Field(
        default=True,
        description=_RANK_NORMALIZATION + " On by default for FedAvg (a no-op with equal ranks); "
        "off reproduces FedIT's zero-padding.",
    )


class HetLoRAParams(StrategyParams):
    """HetLoRA: truncation, norm-weighted zero-padded averaging, optional self-pruning."""

    self_pruning: bool = Field(
        default=False,
        description="Rank self-pruning: when a client's tail norm ||B[:, k:]|| ||A[k:, :]|| "
        "(k = floor(gamma r_i)) decreased since its previous round, its rank becomes k.",
    )
    prune_gamma: float = Field(
        default=0.9, gt=0.0, lt=1.0, description="Rank decay gamma in (0, 1) of self-pruning."
    )
    prune_lambda: float = Field(
        default=1e-3,
        ge=0.0,
        description="Weight of the client-side tail-norm regularizer lambda ||B_tail|| ||A_tail|| "
        "(applied by clients that support it; the server-side pruning rule needs no client help).",
    )
    min_rank: int = Field(default=1, ge=1, le=4096, description="Self-pruning never goes below.")
    rank_normalization: bool = Field(default=False, description=_RANK_NORMALIZATION)


class FLoRAParams(StrategyParams):
    """FLoRA: stacking (exact); clients merge the stacked module and start a fresh LoRA."""

    weighting: Weighting = Field(default="num_examples", description=_WEIGHTING_DESCRIPTION)


class FlexLoRAParams(StrategyParams):
    """FlexLoRA: average of products, then SVD redistribution to each client's rank."""

    weighting: Weighting = Field(default="num_examples", description=_WEIGHTING_DESCRIPTION)
    sigma_split: Literal["b", "balanced"] = Field(
        default="b",
        description="Where the singular values go on redistribution: 'b' (all into B, as the "
        "paper's code does) or 'balanced' (Sigma^1/2 on each factor).",
    )
    rank_normalization: bool = Field(
        default=False,
        description="Rank-aware normalization: average the clients' changes (final product "
        "minus the truncated start they received) and add them to the global update, instead "
        "of averaging their products, which replaces every component beyond a client's rank "
        "by zero for that client's share of the weight, every round.",
    )


class FSLoRAParams(StrategyParams):
    """FSLoRA: sketched global rank-r LoRA, per-client index sets, server optimizer."""

    global_rank: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Global rank r of the sketched factors; empty uses the federation's global "
        "rank. A client's sketch size k_i is min(its rank budget, r).",
    )
    server_optimizer: Literal["adamw", "sgd"] = Field(
        default="sgd",
        description="Server optimizer fed with the pseudo-gradient (1/K) sum scatter(delta_i). "
        "'sgd' with server_lr 1 (the default) is FedAvg of the sketched factor updates; the "
        "paper's 'adamw' at 5e-4 suits runs of ~200 rounds (it moves each parameter by at most "
        "~server_lr per round).",
    )
    server_lr: float = Field(
        default=1.0,
        gt=0.0,
        le=10.0,
        description="Server learning rate (1 with sgd; the paper's AdamW: 5e-4 or 3e-4).",
    )
    weight_decay: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Decoupled weight decay of AdamW (or SGD's L2); 0 by default, as in the "
        "method (a decay shrinks the global product every round, even when nothing is learned).",
    )
    betas: tuple[float, float] = Field(
        default=(0.9, 0.999), description="AdamW (beta1, beta2); each in [0, 1)."
    )
    eps: float = Field(default=1e-8, gt=0.0, le=1.0, description="AdamW epsilon.")
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0, description="SGD momentum.")

    @model_validator(mode="after")
    def _betas_in_range(self) -> FSLoRAParams:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("betas: each of (beta1, beta2) must lie in [0, 1)")
        return self


class SDFLoRAParams(StrategyParams):
    """SDFLoRA: shared + private modules; stack and re-compress the shared module."""

    private_rank_fraction: float = Field(
        default=1.0 / 3.0,
        ge=0.0,
        lt=1.0,
        description="Fraction of a client's rank budget r_i given to its private module: "
        "r_i^p = round(fraction * r_i), r_i^s = r_i - r_i^p (at least 1).",
    )
    private_rank: int | None = Field(
        default=None,
        ge=0,
        le=4096,
        description="Explicit private rank r^p for every client (overrides the fraction; "
        "clipped so that each client keeps a shared rank >= 1).",
    )
    shared_rank: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Global shared rank budget r_s of the re-compressed shared module; empty "
        "uses the federation's global rank. Client shared ranks are capped at r_s.",
    )
    dp_variant: Literal["local", "server"] = Field(
        default="local",
        description="'local' (variant L): clients clip and noise the shared module before "
        "upload. 'server' (variant S): the server clips each client's shared update to "
        "server_clip_norm and adds Gaussian noise to the aggregate before re-compression "
        "(needs a trusted aggregator; forms a dense m x d noise matrix per layer).",
    )
    server_clip_norm: float = Field(
        default=1.0, gt=0.0, description="Variant S: Frobenius clip C of each shared update."
    )
    server_noise_multiplier: float = Field(
        default=1.0,
        ge=0.0,
        description="Variant S: noise std is sigma * C / K on the aggregate (sigma = this).",
    )
    weighting: Weighting = Field(default="num_examples", description=_WEIGHTING_DESCRIPTION)


class PreLortParams(StrategyParams):
    """PreLort (a reconstruction): prefix-nested training and segment-wise aggregation."""

    truncation_levels: Literal["segments", "powers_of_two", "rank_only"] = Field(
        default="segments",
        description="Truncation levels T_i a client samples per step: 'segments' (the distinct "
        "participant ranks <= r_i), 'powers_of_two' (2^j <= r_i), or 'rank_only' (no nesting). "
        "r_i itself is always included.",
    )
    weighting: Weighting = Field(default="num_examples", description=_WEIGHTING_DESCRIPTION)


FACTOR_SPACE_STRATEGIES = frozenset({"fedavg", "hetlora", "prelort", "fslora"})
"""Strategies whose global model's factors keep their meaning across rounds (truncation
prefixes of one global LoRA): a server optimizer may act on the factors element by element."""
PRODUCT_SPACE_STRATEGIES = frozenset({"flexlora", "sdflora"})
"""Strategies whose global factors come from a new SVD each round (defined only up to sign and
rotation): a server optimizer must act on the product ``s B A`` (kept factored)."""


class ServerOptimizerParams(StrategyParams):
    """A server optimizer on the aggregated change of the global model (FedOpt: Reddi et al.,
    "Adaptive Federated Optimization", ICLR 2021), wrapped around any strategy.

    The strategy proposes the new global model; its change ``Delta`` from the previous one is
    the negative pseudo-gradient. ``momentum`` (FedAvgM): ``m <- beta m + Delta``,
    ``W <- W + lr m``. ``adam`` / ``yogi``: FedAdam / FedYogi, ``W <- W + lr m_hat /
    (sqrt(v_hat) + tau)`` with ``m, v`` the first and second moments of ``Delta`` (Yogi's
    additive ``v``), bias-corrected as in Adam (Reddi et al. leave them uncorrected; with the
    correction the first round moves each parameter by about ``lr``, as Adam's first step).
    Factor-space strategies (FedAvg, HetLoRA, PreLort, FSLoRA) apply it to every factor and
    head tensor. FlexLoRA and SDFLoRA apply momentum to the product ``s B A`` (the buffer is
    kept factored at twice the global rank, so no ``m x d`` matrix is formed) and to the
    heads; the adaptive ones need element-wise moments of the product and are refused for
    them. FLoRA's global model is a stack merged into the clients' weights: none applies.
    """

    name: Literal["none", "momentum", "adam", "yogi"] = Field(
        default="none",
        description="'none' publishes the strategy's aggregate as is; 'momentum' is FedAvgM; "
        "'adam' / 'yogi' are FedAdam / FedYogi (factor-space strategies only).",
    )
    lr: float = Field(
        default=1.0,
        gt=0.0,
        le=100.0,
        description="Server learning rate (1 with momentum; FedAdam/FedYogi need a rate of the "
        "size of one round's change per parameter, e.g. 1e-3 to 1e-2).",
    )
    momentum: float = Field(
        default=0.9, ge=0.0, lt=1.0, description="beta1: momentum / first-moment decay."
    )
    beta2: float = Field(
        default=0.99, ge=0.0, lt=1.0, description="Second-moment decay (adam, yogi)."
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="constant",
        description="Server learning rate over the rounds: 'constant', or 'cosine' (decay "
        "to 10% of lr at the last round, the client schedule's rule).",
    )
    warmup_rounds: int = Field(
        default=0, ge=0, le=10_000, description="Rounds of linear warm-up of the server rate."
    )
    tau: float = Field(
        default=1e-8,
        gt=0.0,
        le=1.0,
        description="Adaptivity tau added to sqrt(v_hat) (adam, yogi): Adam's epsilon. Keep it "
        "well below the typical size of one round's change per parameter.",
    )

    def check_strategy(self, strategy: str) -> None:
        """Raise ``ValueError`` if ``strategy`` cannot take this optimizer (names the fix)."""
        if self.name == "none":
            return
        if strategy in FACTOR_SPACE_STRATEGIES:
            return
        if strategy in PRODUCT_SPACE_STRATEGIES and self.name == "momentum":
            return
        if strategy in PRODUCT_SPACE_STRATEGIES:
            raise ValueError(
                f"server optimizer {self.name!r} needs element-wise moments of the global "
                f"product, which {strategy} never forms: use 'momentum' or 'none'"
            )
        raise ValueError(
            f"{strategy} merges its global update into the clients' weights every round; a "
            "server optimizer does not apply: use 'none'"
        )


class RobustAggregationParams(StrategyParams):
    """Server-side defences against a hostile participant, around any strategy
    (docs/security.md#robust-aggregation; ``worker/strategies/robust.py``).

    Each update's aggregation weight is its claimed ``num_examples``, capped at its
    membership's ``max_examples`` (set by the admin), then no client's share of the round's
    total weight exceeds ``max_client_weight_share`` (the excess is spread over the others in
    proportion to their weights). Each update's change from the start it was given (the
    Frobenius norm of all its uploaded tensors minus their start values) is scaled down to at
    most the norm bound: ``norm_bound_multiple`` x the round's (lower) median change norm
    (``adaptive``), or ``norm_bound_value`` (``fixed``). ``rule`` replaces FedAvg's weighted
    mean of the factors by a coordinate-wise median or trimmed mean.
    """

    max_client_weight_share: float | None = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Largest share of a round's total aggregation weight one client may have "
        "(0.5: no organization outweighs all the others together); null for no cap. With K "
        "updates a cap below 1/K cannot be met: the weights are then uniform.",
    )
    norm_bound: Literal["adaptive", "fixed", "none"] = Field(
        default="adaptive",
        description="Bound each update's change from its start: 'adaptive' (norm_bound_multiple "
        "x the round's median change norm), 'fixed' (norm_bound_value), or 'none'.",
    )
    norm_bound_multiple: float = Field(
        default=5.0,
        ge=1.0,
        le=1000.0,
        description="adaptive: the bound is this multiple of the round's lower median change "
        "norm. Generous by default, so honest updates of different ranks and data sizes are "
        "left as they are.",
    )
    norm_bound_value: float | None = Field(
        default=None,
        gt=0.0,
        le=1e6,
        description="fixed: the bound on the Frobenius norm of an update's change (all its "
        "tensors together, in the client's own factors). Required when norm_bound is 'fixed'.",
    )
    rule: Literal["mean", "median", "trimmed_mean"] = Field(
        default="mean",
        description="How FedAvg combines the factors: the strategy's weighted 'mean', or a "
        "coordinate-wise 'median' or 'trimmed_mean' (unweighted; robust to a minority of "
        "hostile clients). Other strategies take 'mean' only.",
    )
    trim_fraction: float = Field(
        default=0.2,
        ge=0.0,
        lt=0.5,
        description="trimmed_mean: the fraction of the updates dropped at each end, per "
        "coordinate (rounded down; at least one each side when there are 3 or more updates).",
    )

    @model_validator(mode="after")
    def _fixed_needs_value(self) -> RobustAggregationParams:
        if self.norm_bound == "fixed" and self.norm_bound_value is None:
            raise ValueError(
                "norm_bound 'fixed' needs norm_bound_value (the bound on an update's change "
                "norm); or use 'adaptive'"
            )
        return self

    def check_strategy(self, strategy: str) -> None:
        """Raise ``ValueError`` if ``strategy`` cannot take this rule (names the fix)."""
        if self.rule != "mean" and strategy not in ROBUST_RULE_STRATEGIES:
            raise ValueError(
                f"rule {self.rule!r} is defined for {', '.join(sorted(ROBUST_RULE_STRATEGIES))} "
                f"only ({strategy} does not average one global model's factors): use 'mean'"
            )


ROBUST_RULE_STRATEGIES = frozenset({"fedavg"})
"""Strategies whose global model is a (weighted) coordinate-wise mean of the clients' factors,
so a coordinate-wise median or trimmed mean is defined."""


def resolve_robust(
    strategy: str, chosen: RobustAggregationParams | dict[str, object] | None
) -> RobustAggregationParams:
    """The federation's robust-aggregation settings (defaults for absent fields); raises
    ``ValueError`` (or ``pydantic.ValidationError``) if they do not fit ``strategy``."""
    params = (
        chosen
        if isinstance(chosen, RobustAggregationParams)
        else RobustAggregationParams.model_validate(chosen or {})
    )
    params.check_strategy(strategy)
    return params


DEFAULT_SERVER_OPTIMIZER = ServerOptimizerParams(name="yogi", lr=0.01, lr_schedule="cosine")
"""The server step of FedAvg, HetLoRA and PreLort when a federation names none (measured in
bench/fedsim.py: FedYogi kept the last rounds within the tightest band; FedAdam at 0.02
diverged). The others get 'none': FlexLoRA and SDFLoRA cannot take an adaptive step, their
clients' AdamW with server momentum stayed at the majority class, and FSLoRA keeps its own."""

ADAM_CLIENT_TRAINING: dict[str, object] = {
    "optimizer": "adamw",
    "learning_rate": 2e-3,
    "label_balance": "none",
}
"""Local training defaults of the strategies without the adaptive server step (FlexLoRA, SDFLoRA,
FLoRA, FSLoRA): their clients must make the progress themselves. Logit adjustment is off: with
AdamW's per-client normalisation it reverses the clients' pull on the boundary instead of
removing it (tests/client_sdk/test_local_training.py, docs/benchmarks.md)."""


SERVER_STEP_STRATEGIES = frozenset({"fedavg", "hetlora", "prelort"})
"""Strategies whose defaults are client SGD under the adaptive server step. FSLoRA could take
one, but its r/k-scaled sketches made FedYogi diverge in bench/fedsim.py (seed 0, round 4):
it keeps its own server step and client AdamW, like the strategies that cannot take one."""


def resolve_server_optimizer(
    strategy: str, chosen: ServerOptimizerParams | dict[str, object] | None
) -> ServerOptimizerParams:
    """The federation's server optimizer: ``chosen``, or the platform's default for
    ``strategy`` when it is None. Raises ``ValueError`` if ``strategy`` cannot take it."""
    if chosen is None:
        if strategy in SERVER_STEP_STRATEGIES:
            return DEFAULT_SERVER_OPTIMIZER
        return ServerOptimizerParams(name="none")
    params = (
        chosen
        if isinstance(chosen, ServerOptimizerParams)
        else ServerOptimizerParams.model_validate(chosen)
    )
    params.check_strategy(strategy)
    return params


def resolve_training(strategy: str, training: LocalTraining) -> LocalTraining:
    """``training`` with the defaults of ``strategy`` for every field it did not set
    explicitly (pydantic's ``model_fields_set``): :data:`ADAM_CLIENT_TRAINING` for the
    strategies without the adaptive server step, the class defaults otherwise."""
    if strategy in SERVER_STEP_STRATEGIES:
        return training
    changes = {k: v for k, v in ADAM_CLIENT_TRAINING.items() if k not in training.model_fields_set}
    resolved = training.model_copy(update=changes)
    # what the federation stores is explicit from now on
    return LocalTraining.model_validate(resolved.model_dump())


STRATEGY_PARAMS: dict[str, type[StrategyParams]] = {
    "fedavg": FedAvgParams,
    "hetlora": HetLoRAParams,
    "flora": FLoRAParams,
    "flexlora": FlexLoRAParams,
    "fslora": FSLoRAParams,
    "sdflora": SDFLoRAParams,
    "prelort": PreLortParams,
}

RECOMMENDED_STRATEGY = "fedavg"
"""The strategy the dashboard preselects, the demo runs and ``fedlora strategies`` marks: the
best of the learning-quality benchmark (``docs/benchmarks.md``, ``bench/quality.py``): FedAvg
with rank normalization (each rank component averaged over the organizations that hold it)
under the server's FedYogi step."""

STRATEGY_DESCRIPTIONS: dict[str, str] = {
    "fedavg": "FedAvg: average A and B, each rank component over the organizations that hold "
    "it (any ranks; FedIT with equal ranks), under the server's adaptive step.",
    "hetlora": "HetLoRA: truncate to each rank, norm-weighted zero-padded average, "
    "optional rank self-pruning.",
    "flora": "FLoRA: stack the clients' factors (exact average of products); clients merge it "
    "and start a fresh LoRA.",
    "flexlora": "FlexLoRA: average the clients' products, redistribute by a factored SVD "
    "truncated to each rank.",
    "fslora": "FSLoRA: sketch a global rank-r LoRA per client (r/k_i scaled), average the "
    "sketched deltas, server optimizer step.",
    "sdflora": "SDFLoRA: shared + private LoRA; stack and re-compress the shared module to "
    "rank r_s, DP on the shared module only.",
    "prelort": "PreLort (reconstruction): prefix-nested local training, segment-wise average "
    "over covering clients.",
}

if set(STRATEGY_PARAMS) != set(STRATEGY_NAMES) or set(STRATEGY_DESCRIPTIONS) != set(
    STRATEGY_NAMES
):  # pragma: no cover - a programming error caught at import
    raise RuntimeError("strategy params/descriptions do not match protocol.STRATEGY_NAMES")


def validate_params(name: str, raw: dict[str, object] | None = None) -> StrategyParams:
    """Validate a federation's stored parameters for strategy ``name``.

    Raises ``KeyError`` for an unknown strategy and ``pydantic.ValidationError`` for bad values.
    """
    try:
        model = STRATEGY_PARAMS[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; known: {', '.join(STRATEGY_NAMES)}") from None
    return model.model_validate(raw or {})
