"""Federated evaluation: clients score the published global adapter on their own data.

Every task after round 1 names the latest published global adapter (``plan.global_adapter``);
its client evaluates base model + that adapter on its own evaluation split before it trains
and posts a :class:`~fedlora_client.protocol.GlobalEvaluation` (:func:`record_evaluation`). So
round N's tasks score round N-1's adapter, and the evaluation round that opens after the last
training round (``RoundKind.EVALUATION``: evaluate only, no training) scores the final one.

An adapter's federated score (:func:`scores`) is the ``num_examples``-weighted mean of its
clients' losses (and accuracies), one row per client (a client's later report replaces its
earlier one). The best adapter (:func:`best_adapter`) is the most accurate for classification
(ties: lower loss, then the later round) and the lowest loss for causal LM (ties: the later
round). While a round is open its adapter's score is partial: it counts the clients that have
reported so far (``num_clients``).

Evaluation metrics are reported in the clear: they are not covered by the DP guarantee.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import queue
from api.db import (
    AdapterEvaluation,
    Client,
    GlobalAdapter,
    Round,
    Task,
    TaskStatus,
    utcnow,
)
from api.errors import ConflictError, InvalidInputError, NotFoundError
from api.services.client_tasks import client_task
from api.services.rounds import maybe_close_round
from fedlora_client.protocol import GlobalEvaluation, TaskType, TrainingPlan


@dataclass(frozen=True)
class Score:
    """An adapter's federated evaluation: example-weighted over the clients that reported."""

    adapter_id: uuid.UUID
    num_examples: int
    num_clients: int
    loss: float
    accuracy: float | None

    def perplexity(self, task_type: TaskType) -> float | None:
        """Causal LM: ``exp(loss)`` of the weighted mean loss; None for classification."""
        if task_type is not TaskType.CAUSAL_LM:
            return None
        return math.exp(self.loss) if self.loss < 700 else math.inf


def _holds(task: Task, client: Client) -> bool:
    return task.status == TaskStatus.LEASED and task.lease_owner == client.id


def record_evaluation(
    *,
    session: Session,
    client: Client,
    task_id: uuid.UUID,
    body: GlobalEvaluation,
    enqueue: queue.Enqueuer | None = None,
) -> AdapterEvaluation:
    """Store the client's score of the adapter its task names; commits.

    The client must hold the task (or have uploaded it already), the task must name a global
    adapter, and ``body.adapter_sha256`` must be that adapter. For an evaluation-only task the
    report is the task's result: it is marked reported and its round may close.
    """
    task = client_task(session=session, client=client, task_id=task_id)
    if not (_holds(task, client) or task.status in (TaskStatus.UPLOADED, TaskStatus.REPORTED)):
        raise ConflictError(
            f"task {task_id} is {task.status}: evaluate the global adapter while you hold the "
            "task (take it with GET /api/v1/client/tasks/next)"
        )
    plan = TrainingPlan.model_validate(task.plan)
    if plan.global_adapter is None:
        raise ConflictError(
            f"task {task_id} names no global adapter to evaluate (round 1 has none yet)"
        )
    if body.adapter_sha256 != plan.global_adapter.sha256:
        raise InvalidInputError(
            f"adapter_sha256 {body.adapter_sha256[:12]}... is not the adapter task {task_id} "
            f"names ({plan.global_adapter.sha256[:12]}...): evaluate the adapter from "
            "GET /api/v1/client/tasks/{task_id}/global-adapter"
        )
    number = session.scalar(sa.select(Round.number).where(Round.id == task.round_id))
    adapter = session.scalar(
        sa.select(GlobalAdapter)
        .where(
            GlobalAdapter.federation_id == task.federation_id,
            GlobalAdapter.adapter_sha256 == body.adapter_sha256,
            GlobalAdapter.round_number < (number or 0),
        )
        .order_by(GlobalAdapter.round_number.desc())
        .limit(1)
    )
    if adapter is None:
        raise NotFoundError(f"no published global adapter {body.adapter_sha256[:12]}...")
    values = {
        "task_id": task.id,
        "num_examples": body.num_examples,
        "loss": body.loss,
        "accuracy": body.accuracy,
        "margin_histogram": body.margin_histogram,
    }
    closes = plan.evaluate_only and _holds(task, client)
    if closes:
        task.status = TaskStatus.REPORTED
        task.reported_at = utcnow()
        task.report_metrics = {
            "global_eval_loss": body.loss,
            "global_eval_examples": float(body.num_examples),
            **({"global_eval_accuracy": body.accuracy} if body.accuracy is not None else {}),
        }
    row = _upsert(session, adapter, client.id, values)
    round_id = task.round_id
    if closes:
        maybe_close_round(session=session, round_id=round_id, enqueue=enqueue)
    return row


def _upsert(
    session: Session, adapter: GlobalAdapter, client_id: uuid.UUID, values: dict[str, object]
) -> AdapterEvaluation:
    """One row per (adapter, client): a later report replaces the earlier one. Commits."""
    for _ in range(2):  # a concurrent first report of the same pair: retry as an update
        row = session.scalar(
            sa.select(AdapterEvaluation).where(
                AdapterEvaluation.adapter_id == adapter.id,
                AdapterEvaluation.client_id == client_id,
            )
        )
        if row is None:
            row = AdapterEvaluation(
                federation_id=adapter.federation_id,
                adapter_id=adapter.id,
                client_id=client_id,
                **values,
            )
            session.add(row)
        else:
            for key, value in values.items():
                setattr(row, key, value)
        try:
            session.commit()
            return row
        except IntegrityError:
            session.rollback()
    raise ConflictError("the evaluation could not be stored; send it again")


def scores(*, session: Session, federation_id: uuid.UUID) -> dict[uuid.UUID, Score]:
    """Every evaluated adapter of the federation and its example-weighted score."""
    e = AdapterEvaluation
    scored = sa.case((e.accuracy.is_not(None), e.num_examples), else_=0)
    rows = session.execute(
        sa.select(
            e.adapter_id,
            sa.func.sum(e.num_examples),
            sa.func.count(),
            sa.func.sum(e.num_examples * e.loss),
            sa.func.sum(scored),
            sa.func.sum(sa.func.coalesce(e.num_examples * e.accuracy, 0.0)),
        )
        .where(e.federation_id == federation_id)
        .group_by(e.adapter_id)
    ).all()
    out: dict[uuid.UUID, Score] = {}
    for adapter_id, n, clients, loss_sum, n_acc, acc_sum in rows:
        out[adapter_id] = Score(
            adapter_id=adapter_id,
            num_examples=int(n),
            num_clients=int(clients),
            loss=float(loss_sum) / int(n),
            accuracy=float(acc_sum) / int(n_acc) if n_acc else None,
        )
    return out


def best_adapter(scored: Iterable[tuple[Score, int]], task_type: TaskType) -> uuid.UUID | None:
    """The adapter with the best federated score among ``(score, round_number)`` pairs."""

    def key(item: tuple[Score, int]) -> tuple[float, float, int]:
        score, number = item
        if task_type is TaskType.SEQ_CLS and score.accuracy is not None:
            return (score.accuracy, -score.loss, number)
        return (-math.inf if task_type is TaskType.SEQ_CLS else 0.0, -score.loss, number)

    items = list(scored)
    if not items:
        return None
    return max(items, key=key)[0].adapter_id


@dataclass(frozen=True)
class Scoreboard:
    """A federation's adapters with their federated scores, the best and the latest one."""

    task_type: TaskType
    by_adapter: dict[uuid.UUID, Score]
    adapter_of_round: dict[uuid.UUID, uuid.UUID]
    best: uuid.UUID | None
    latest: uuid.UUID | None

    def of_adapter(self, adapter_id: uuid.UUID) -> Score | None:
        return self.by_adapter.get(adapter_id)

    def of_round(self, round_id: uuid.UUID) -> Score | None:
        """The score of the adapter ``round_id`` published (None: none, or not yet scored)."""
        adapter = self.adapter_of_round.get(round_id)
        return None if adapter is None else self.by_adapter.get(adapter)


def scoreboard(*, session: Session, federation_id: uuid.UUID, task_type: TaskType) -> Scoreboard:
    """Scores of every adapter of the federation, and which adapter is best and latest."""
    adapters = session.execute(
        sa.select(GlobalAdapter.id, GlobalAdapter.round_id, GlobalAdapter.round_number).where(
            GlobalAdapter.federation_id == federation_id
        )
    ).all()
    by_adapter = scores(session=session, federation_id=federation_id)
    number_of = {a.id: a.round_number for a in adapters}
    best = best_adapter(
        ((s, number_of[a]) for a, s in by_adapter.items() if a in number_of), task_type
    )
    latest = max(adapters, key=lambda a: a.round_number).id if adapters else None
    return Scoreboard(
        task_type=task_type,
        by_adapter=by_adapter,
        adapter_of_round={a.round_id: a.id for a in adapters},
        best=best,
        latest=latest,
    )
