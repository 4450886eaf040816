"""The DP preview of a draft federation, or of an existing one for its members' sizes, with the
warnings an admin should read before starting it.

The numbers come from :mod:`fedlora_client.dp_preview` (the SDK's own schedule and accountant,
torch-free); this module picks the organization sizes and words the warnings.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from api.db import Membership
from api.errors import InvalidInputError
from api.schemas.dp_preview import (
    MAX_DATASET_SIZES,
    DPPreviewPublic,
    DPPreviewRequest,
    DPPreviewRow,
    DPWarning,
    ModelShapes,
    SizesFrom,
)
from api.services.federations import get_federation
from fedlora_client import dp_preview as core
from fedlora_client.protocol import DPMode, DPSettings, LocalTraining

CLIENT_LEVEL_MIN_CLIENTS = 50
"""Below this many organizations per round the dashboard and CLI warn about client-level DP."""

BASIS = {
    DPMode.SAMPLE: "one DP-SGD step of one organization: noise sigma C sqrt(d) over the clipped "
    "sum of a logical batch, at most batch x C",
    DPMode.CLIENT: "the round's average of clients_per_round clipped updates: their independent "
    "noises average to sigma C sqrt(d / clients_per_round), the updates to at most C",
    DPMode.NONE: "no noise is added",
}


def _sizes_label(sizes: list[int]) -> str:
    return " and ".join(f"{n:,}" for n in sizes)


def warnings_for(
    dp: DPSettings, clients_per_round: int, num_rounds: int, rows: list[DPPreviewRow]
) -> list[DPWarning]:
    """What an admin should know before starting: client-level DP with too few organizations,
    noise larger than the signal, a budget the rounds exceed, no guarantee at all."""
    out: list[DPWarning] = []
    if dp.mode is DPMode.NONE:
        out.append(
            DPWarning(
                code="no_guarantee",
                message="DP is off: the uploads carry no "
                "privacy guarantee for the organizations' data.",
            )
        )
        return out
    if dp.mode is DPMode.CLIENT and clients_per_round < CLIENT_LEVEL_MIN_CLIENTS:
        out.append(
            DPWarning(
                code="client_level_few_clients",
                message=f"client-level DP adds noise the size of one whole update to an average "
                f"over {clients_per_round} organization{'s' if clients_per_round != 1 else ''}; "
                "meaningful with many (hundreds) per round. With few organizations use "
                "sample-level DP (mode 'sample'), which protects each example and needs no crowd.",
            )
        )
    unbounded = [r.num_examples for r in rows if r.epsilon is None]
    if unbounded:
        out.append(
            DPWarning(
                code="no_guarantee",
                message=f"noise multiplier 0 adds no noise: "
                f"no finite epsilon for {_sizes_label(unbounded)} examples.",
            )
        )
    noisy = [r for r in rows if r.noise_to_signal is not None and r.noise_to_signal > 1]
    if noisy:
        fix = (
            "raise target_epsilon, give each step more examples (recipe 'auto'), or lower "
            "global_rank (fewer noised parameters)"
            if dp.mode is DPMode.SAMPLE
            else "more organizations per round, a higher target_epsilon, or sample-level DP"
        )
        ratios = ", ".join(f"{r.noise_to_signal:.3g}" for r in noisy if r.noise_to_signal)
        out.append(
            DPWarning(
                code="noise_dominates",
                message=f"the noise outweighs the signal for organizations of "
                f"{_sizes_label([r.num_examples for r in noisy])} examples (noise-to-signal "
                f"{ratios}): training learns little. Try {fix}.",
            )
        )
    over = [r for r in rows if r.epsilon is not None and r.epsilon > dp.epsilon_budget]
    if over:
        out.append(
            DPWarning(
                code="over_budget",
                message=f"{num_rounds} rounds cost organizations of "
                f"{_sizes_label([r.num_examples for r in over])} examples epsilon "
                f"{', '.join(f'{r.epsilon:.3g}' for r in over if r.epsilon)}, above the "
                f"epsilon budget {dp.epsilon_budget:g}: they stop being selected before the "
                "last round. Raise epsilon_budget, lower target_epsilon or raise the noise.",
            )
        )
    return out


def preview(
    *,
    model: ModelShapes | None,
    rank: int,
    num_rounds: int,
    clients_per_round: int,
    training: LocalTraining,
    dp: DPSettings,
    dataset_sizes: list[int] | None,
    sizes_from: SizesFrom = "request",
) -> DPPreviewPublic:
    """The preview for these settings and sizes (the defaults when ``dataset_sizes`` is None)."""
    sizes = list(dataset_sizes) if dataset_sizes else list(core.DEFAULT_DATASET_SIZES)
    try:
        d, rows = core.preview(
            training=training,
            dp=dp,
            num_rounds=num_rounds,
            clients_per_round=clients_per_round,
            rank=rank,
            modules=model.modules if model is not None else None,
            extra_trainable=model.extra_trainable if model is not None else None,
            dataset_sizes=sizes,
        )
    except core.DPPreviewError as exc:
        raise InvalidInputError(f"dp: {exc}") from None
    public = [DPPreviewRow.model_validate(row, from_attributes=True) for row in rows]
    return DPPreviewPublic(
        mode=dp.mode,
        delta=dp.delta,
        epsilon_budget=dp.epsilon_budget,
        num_rounds=num_rounds,
        clients_per_round=clients_per_round,
        rank=rank,
        dp_parameters=d,
        noise_to_signal_basis=BASIS[dp.mode],
        dataset_sizes_from=sizes_from if dataset_sizes else "default",
        rows=public,
        warnings=warnings_for(dp, clients_per_round, num_rounds, public),
    )


def preview_draft(*, body: DPPreviewRequest) -> DPPreviewPublic:
    return preview(
        model=body.model,
        rank=body.global_rank,
        num_rounds=body.num_rounds,
        clients_per_round=body.clients_per_round,
        training=body.training,
        dp=body.dp,
        dataset_sizes=body.dataset_sizes,
    )


def spread(sizes: list[int], most: int = MAX_DATASET_SIZES) -> list[int]:
    """``sizes`` sorted and deduplicated; past ``most`` of them, ``most`` evenly spaced ones
    from the smallest to the largest (each size costs a calibration)."""
    unique = sorted(set(sizes))
    if len(unique) <= most:
        return unique
    step = (len(unique) - 1) / (most - 1)
    return sorted({unique[round(i * step)] for i in range(most)})


def preview_federation(
    *, session: Session, federation_id: uuid.UUID, dataset_sizes: list[int] | None
) -> DPPreviewPublic:
    """An existing federation's preview for ``dataset_sizes``, else its members' reported sizes
    (``num_examples`` from their uploads), else the defaults."""
    fed = get_federation(session=session, federation_id=federation_id)
    sizes_from: SizesFrom = "request"
    if not dataset_sizes:
        reported = session.scalars(
            sa.select(Membership.num_examples).where(
                Membership.federation_id == fed.id, Membership.num_examples.is_not(None)
            )
        ).all()
        dataset_sizes = spread([int(n) for n in reported if n]) or None
        sizes_from = "members"
    return preview(
        model=ModelShapes.model_validate(fed.model_spec),
        rank=fed.global_rank,
        num_rounds=fed.num_rounds,
        clients_per_round=fed.clients_per_round,
        training=LocalTraining.model_validate(fed.local_training),
        dp=DPSettings.model_validate(fed.dp),
        dataset_sizes=spread(dataset_sizes) if dataset_sizes else None,
        sizes_from=sizes_from,
    )
