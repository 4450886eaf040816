"""The strategy protocol: two symmetric hooks (plan, aggregate) around a persisted server state.

Shape of a round, as ``worker/tasks.py`` drives it::

    strategy = get_strategy(name, params, device=settings.device)
    state = strategy.init_state(ctx)                      # once, before round 1
    assignments = strategy.plan(state, ctx)               # {client_id: ClientAssignment}
    ... clients train; uploads become ClientUpdate ...
    result = strategy.aggregate(state, ctx, updates)      # AggregationResult
    result.state.save(dir); publish result.adapter + result.adapter_config(...)
    next_ctx = PlanContext(..., round_number=ctx.round_number + 1, participants=...)
    strategy.plan(result.state, next_ctx)

Contract:

* :class:`PlanContext` is the same object (same round, seed, participants) for a round's
  ``plan`` and ``aggregate``. ``plan`` is a pure, deterministic function of ``(state, ctx)``,
  so ``aggregate`` recomputes what was planned (FSLoRA index sets, ranks) instead of storing it.
* ``plan`` gives each participant its rank budget, capped at the federation's global rank
  (FLoRA: uncapped); SDFLoRA splits it into shared + private.
* Start tensors use PEFT saved key names at the assignment's ``start_lora`` rank and scale
  (``1/s(r)`` is put back into B). Updates are the clients' *final* factors (after DP) at the
  assignment's ``lora``; the server converts them to effective updates ``s_i B_i A_i``.
* ``aggregate`` validates every update (client, LoraSpec, exact key set, shapes, finiteness)
  before any arithmetic and raises a named error from ``errors.py``. Aggregation weights ``p_i``
  are data-size proportional (``num_examples``, or ``weight`` once the robust wrapper has
  bounded it) unless the params say ``uniform``.
  ``extra_trainable`` tensors (a classifier head) are averaged with the data weights.
* :class:`ServerState` is safetensors + JSON (never pickle). Returned tensors live on the CPU.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor

from fedlora_client.protocol import (
    MAX_ABS_VALUE,
    LoraSpec,
    ModelSpec,
    PrivateModule,
    SketchPlan,
    TailPenalty,
    TaskType,
    adapter_shapes,
)
from worker.linalg import resolve_device
from worker.strategies import errors
from worker.strategies.adapters import peft_adapter_config, tensors_from_bytes, tensors_to_bytes
from worker.strategies.params import StrategyParams

STATE_TENSORS = "state.safetensors"
STATE_META = "state.json"
STATE_FORMAT = 1


@dataclass(frozen=True)
class Participant:
    """A client selected for a round, with its rank budget and (if known) its data size."""

    client_id: str
    rank_budget: int
    num_examples: int | None = None


@dataclass(frozen=True)
class PlanContext:
    """Everything a strategy hook needs besides the state; identical for a round's two hooks."""

    federation_id: str
    round_number: int
    total_rounds: int
    seed: int
    task_type: TaskType
    model: ModelSpec
    global_rank: int
    lora_alpha: float
    use_rslora: bool
    params: StrategyParams
    participants: tuple[Participant, ...]

    def scaling(self, rank: int) -> float:
        """The federation's LoRA scale ``s(r)``: ``alpha / r`` or ``alpha / sqrt(r)`` (rsLoRA)."""
        return self.lora_alpha / (math.sqrt(rank) if self.use_rslora else rank)

    def lora_spec(self, rank: int) -> LoraSpec:
        """The federation's convention at ``rank``."""
        return LoraSpec(rank=rank, lora_alpha=self.lora_alpha, use_rslora=self.use_rslora)

    def participant(self, client_id: str) -> Participant:
        for p in self.participants:
            if p.client_id == client_id:
                return p
        raise errors.UnknownClientError("not a participant of this round", client_id=client_id)


def spec_with_scaling(rank: int, scaling: float) -> LoraSpec:
    """A LoraSpec of ``rank`` whose PEFT scaling is exactly ``scaling`` (plain, not rsLoRA)."""
    return LoraSpec(rank=rank, lora_alpha=scaling * rank, use_rslora=False)


@dataclass
class ServerState:
    """A strategy's persistent state: tensors (safetensors) + JSON-able ``meta``."""

    tensors: dict[str, Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_files(self) -> dict[str, bytes]:
        """``{"state.safetensors": ..., "state.json": ...}``: what the artifact store keeps."""
        meta = json.dumps({"format": STATE_FORMAT, "meta": self.meta}, sort_keys=True)
        return {STATE_TENSORS: tensors_to_bytes(self.tensors), STATE_META: meta.encode()}

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> ServerState:
        doc = json.loads(files[STATE_META])
        if doc.get("format") != STATE_FORMAT:
            raise errors.StateMismatchError(f"unknown server state format {doc.get('format')!r}")
        return cls(tensors=tensors_from_bytes(files[STATE_TENSORS]), meta=doc["meta"])

    def save(self, directory: str | Path) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for name, data in self.to_files().items():
            (path / name).write_bytes(data)

    @classmethod
    def load(cls, directory: str | Path) -> ServerState:
        path = Path(directory)
        return cls.from_files({n: (path / n).read_bytes() for n in (STATE_TENSORS, STATE_META)})


@dataclass
class ClientAssignment:
    """What one client receives and trains this round (becomes a ``TrainingPlan``).

    ``start`` holds PEFT-keyed tensors (LoRA factors and head) at ``start_lora``; ``lora`` is the
    LoRA the client trains and uploads. ``merge`` (FLoRA) is merged into the pristine base
    weights before training. ``client_dp`` is False when the server adds the noise (SDFLoRA
    variant S), so the plan should carry DP mode ``none`` for the client.
    """

    client_id: str
    lora: LoraSpec
    start: dict[str, Tensor]
    start_lora: LoraSpec
    merge: dict[str, Tensor] | None = None
    merge_lora: LoraSpec | None = None
    private: PrivateModule | None = None
    nested_truncations: list[int] = field(default_factory=list)
    sketch: SketchPlan | None = None
    tail_penalty: TailPenalty | None = None
    client_dp: bool = True


@dataclass
class ClientUpdate:
    """A client's upload: final factors (+ head) at its plan's ``lora``, PEFT keys."""

    client_id: str
    lora: LoraSpec
    tensors: dict[str, Tensor]
    num_examples: int
    max_examples: int | None = None
    """The membership's admin-set maximum of ``num_examples`` as a weight (None: no maximum)."""
    weight: float | None = None
    """The aggregation weight to use instead of ``num_examples`` (set by the robust wrapper)."""
    start: dict[str, Tensor] | None = None
    """The start tensors the plan gave this client (the robust wrapper's norm bound)."""


@dataclass
class AggregationResult:
    """The new server state and the global adapter to publish (PEFT tensors at ``lora``)."""

    state: ServerState
    adapter: dict[str, Tensor]
    lora: LoraSpec
    metrics: dict[str, float] = field(default_factory=dict)

    def adapter_config(self, ctx: PlanContext, base_model_id: str | None = None) -> dict[str, Any]:
        """``adapter_config.json`` for :attr:`adapter` (``PeftModel.from_pretrained`` loads it)."""
        return peft_adapter_config(
            model=ctx.model, lora=self.lora, task_type=ctx.task_type, base_model_id=base_model_id
        )


def same_spec(a: LoraSpec, b: LoraSpec) -> bool:
    """Equal rank and (to 1e-9 relative) equal scaling."""
    return a.rank == b.rank and math.isclose(a.scaling, b.scaling, rel_tol=1e-9)


class Strategy(ABC):
    """Base of every strategy: ``init_state``, ``plan``, ``aggregate`` (validated template)."""

    name: ClassVar[str]
    params_model: ClassVar[type[StrategyParams]]

    def __init__(self, params: StrategyParams | None = None, *, device: str = "auto") -> None:
        self.params = params if params is not None else self.params_model()
        if not isinstance(self.params, self.params_model):
            raise TypeError(f"{self.name} needs {self.params_model.__name__}")
        self.device = resolve_device(device)

    @abstractmethod
    def init_state(self, ctx: PlanContext) -> ServerState:
        """The seeded state before round 1 (A Kaiming-uniform, B zero, head initialised)."""

    @abstractmethod
    def plan(self, state: ServerState, ctx: PlanContext) -> dict[str, ClientAssignment]:
        """Deterministic assignments for ``ctx.participants``."""

    @abstractmethod
    def client_lora(
        self, state: ServerState, ctx: PlanContext, participant: Participant
    ) -> LoraSpec:
        """The LoRA ``participant`` trains and uploads this round (cheap; used to validate)."""

    @abstractmethod
    def _aggregate(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> AggregationResult:
        """Aggregate validated updates."""

    def expected_upload(
        self, state: ServerState, ctx: PlanContext, participant: Participant
    ) -> dict[str, tuple[int, ...]]:
        return adapter_shapes(ctx.model, self.client_lora(state, ctx, participant).rank)

    def aggregate(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> AggregationResult:
        """Validate every update (named errors, no arithmetic before), then aggregate."""
        self.validate_updates(state, ctx, updates)
        return self._aggregate(state, ctx, updates)

    def validate_updates(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> None:
        if not updates:
            raise errors.NoUpdatesError("aggregate() needs at least one update")
        seen: set[str] = set()
        for u in updates:
            cid = u.client_id
            if cid in seen:
                raise errors.DuplicateUpdateError("more than one update", client_id=cid)
            seen.add(cid)
            participant = ctx.participant(cid)
            if u.num_examples < 1:
                raise errors.UpdateValidationError("num_examples must be >= 1", client_id=cid)
            expected_spec = self.client_lora(state, ctx, participant)
            if not same_spec(u.lora, expected_spec):
                raise errors.LoraSpecMismatchError(
                    f"LoRA rank {u.lora.rank} scaling {u.lora.scaling:g}; the plan asked for "
                    f"rank {expected_spec.rank} scaling {expected_spec.scaling:g}",
                    client_id=cid,
                )
            self._check_tensors(u, self.expected_upload(state, ctx, participant))

    def _check_tensors(self, u: ClientUpdate, expected: dict[str, tuple[int, ...]]) -> None:
        cid = u.client_id
        extra = sorted(set(u.tensors) - set(expected))
        if extra:
            raise errors.UnexpectedTensorError(
                f"tensors not in the plan: {extra[:5]}", client_id=cid
            )
        missing = sorted(set(expected) - set(u.tensors))
        if missing:
            raise errors.MissingTensorError(f"missing tensors: {missing[:5]}", client_id=cid)
        for key, shape in expected.items():
            t = u.tensors[key]
            if tuple(t.shape) != shape:
                raise errors.ShapeMismatchError(
                    f"{key} has shape {tuple(t.shape)}, the plan says {shape}", client_id=cid
                )
            # the API's rule (MAX_ABS_VALUE): one reduction; NaN anywhere makes amax NaN, and
            # NaN < bound is False, so NaN, Inf and values too large all fail the comparison
            if not t.is_floating_point() or (
                t.numel() and not bool(t.detach().abs().amax() < MAX_ABS_VALUE)
            ):
                raise errors.NonFiniteUpdateError(
                    f"{key} holds NaN/Inf or a value of magnitude {MAX_ABS_VALUE:g} or more (or "
                    "is not floating point)",
                    client_id=cid,
                )
