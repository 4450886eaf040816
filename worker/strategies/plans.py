"""Turn a :class:`ClientAssignment` into the wire ``TrainingPlan`` (for ``worker/tasks.py``).

``encode_tensors`` gives the safetensors bytes of a start or merge artifact with its sha256
and size, and :func:`training_plan` fills a ``TrainingPlan`` from the assignment, the stored
artifacts' references and the federation's settings. A plan whose assignment says
``client_dp=False`` (SDFLoRA variant S: the server adds the noise) carries DP mode ``none``.
The plan's ``training.learning_rate`` is the round's rate under the federation's
``lr_schedule`` (:meth:`LocalTraining.round_learning_rate`).
"""

from __future__ import annotations

import hashlib

from torch import Tensor

from fedlora_client.protocol import (
    ArtifactRef,
    DPMode,
    DPPlan,
    DPSettings,
    LocalTraining,
    LoraSpec,
    TrainingPlan,
)
from worker.strategies.adapters import tensors_to_bytes
from worker.strategies.base import ClientAssignment, PlanContext


def encode_tensors(tensors: dict[str, Tensor], lora: LoraSpec) -> tuple[bytes, ArtifactRef]:
    """safetensors bytes of ``tensors`` and the :class:`ArtifactRef` describing them."""
    data = tensors_to_bytes(tensors)
    return data, ArtifactRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data), lora=lora)


def training_plan(
    assignment: ClientAssignment,
    ctx: PlanContext,
    *,
    strategy: str,
    base_model_id: str,
    start: ArtifactRef,
    merge: ArtifactRef | None,
    training: LocalTraining,
    dp: DPSettings,
    seed: int,
) -> TrainingPlan:
    """The ``TrainingPlan`` of one assignment (``start``/``merge`` refer to stored artifacts)."""
    dp_fields = dp.model_dump()
    if not assignment.client_dp:
        dp_fields["mode"] = DPMode.NONE
    return TrainingPlan(
        strategy=strategy,
        task_type=ctx.task_type,
        base_model_id=base_model_id,
        model=ctx.model,
        lora=assignment.lora,
        start=start,
        merge=merge,
        private=assignment.private,
        nested_truncations=assignment.nested_truncations,
        sketch=assignment.sketch,
        tail_penalty=assignment.tail_penalty,
        training=training.model_copy(
            update={
                "learning_rate": training.round_learning_rate(
                    ctx.round_number, max(1, ctx.total_rounds)
                )
            }
        ),
        dp=DPPlan(**dp_fields, planned_rounds=max(1, ctx.total_rounds)),
        seed=seed,
    )
