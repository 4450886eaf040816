"""The participation loop: check the model and data, resume staged uploads and held tasks,
poll, train with DP, upload, report, repeat; a task this client cannot train is released."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import httpx

from fedlora_client import protocol as p
from fedlora_client._client import FedloraClient
from fedlora_client._config import ClientConfig
from fedlora_client._errors import (
    ConfigError,
    ConflictError,
    FedloraClientError,
    NotFoundError,
    PrivacyBudgetExceededError,
)
from fedlora_client._model import detect_hardware
from fedlora_client._participant import Participant

log = logging.getLogger("fedlora_client")
Event = Callable[[str, dict[str, object]], None]


def _quiet(kind: str, info: dict[str, object]) -> None:
    log.info("%s %s", kind, info)


def resume_pending(participant: Participant, on_event: Event = _quiet) -> int:
    """Finish uploads staged by an earlier (interrupted) run; returns how many were sent."""
    sent = 0
    for task_id in participant.client.pending_uploads():
        try:
            session = participant.client.upload(task_id)
        except (NotFoundError, ConflictError) as exc:
            on_event("upload_dropped", {"task_id": task_id, "reason": str(exc)})
            participant.client.discard_upload(task_id)
            continue
        on_event("uploaded", {"task_id": task_id, "update_id": session.update_id, "resumed": True})
        sent += 1
    return sent


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1024]


def release_held(participant: Participant, exc: BaseException, on_event: Event = _quiet) -> None:
    """Give back the task an earlier run left leased, because this client cannot train now."""
    try:
        task = participant.client.held_task()
        if task is not None:
            participant.release(task, _reason(exc))
            on_event("released", {"task_id": task.task_id, "reason": _reason(exc)})
    except FedloraClientError as error:  # the original error is the one to report
        log.warning("could not release the task this client holds: %s", error)


def evaluate_global(participant: Participant, task: p.TaskAssignment, on_event: Event) -> bool:
    """Federated evaluation at the start of a task: score the global adapter the plan names on
    this client's evaluation split and report it. Returns whether a score was accepted.

    Nothing to score (round 1, or no evaluation split) returns False. An error while scoring
    never stops the training that follows: it is reported as an ``evaluation_failed`` event.
    """
    try:
        evaluation = participant.evaluate_global(task)
        if evaluation is None:
            return False
        participant.client.report_evaluation(task.task_id, evaluation)
    except Exception as exc:  # a score is worth less than the round's training
        log.warning("task %s: federated evaluation failed: %s", task.task_id, _reason(exc))
        on_event("evaluation_failed", {"task_id": task.task_id, "reason": _reason(exc)})
        return False
    info: dict[str, object] = {
        "task_id": task.task_id,
        "examples": evaluation.num_examples,
        "loss": evaluation.loss,
    }
    if evaluation.accuracy is not None:
        info["accuracy"] = evaluation.accuracy
    elif task.plan.task_type is p.TaskType.CAUSAL_LM:
        info["perplexity"] = math.exp(min(evaluation.loss, 700.0))
    on_event("evaluated", info)
    return True


NO_EVALUATION_DATA = (
    "no evaluation data to score the final adapter: set data.eval_path, or give a data file "
    "large enough to hold out evaluation rows"
)


def run_once(
    participant: Participant, *, wait: float = 30.0, on_event: Event = _quiet
) -> p.UploadSession | None:
    """Take one task if there is one: evaluate, train, upload, report. None when no task came
    (or when the task only evaluated: the evaluation pass after the last round).

    A task an earlier run left leased is resumed first. The global adapter the plan names is
    evaluated first (:func:`evaluate_global`). If training fails (bad data, the budget, out of
    memory, any error before the upload is staged), the task is released at once with the
    error as its reason, so the round does not wait for it, and the error is raised.
    """
    return _step(participant, wait=wait, on_event=on_event)[1]


def _step(
    participant: Participant, *, wait: float, on_event: Event
) -> tuple[bool, p.UploadSession | None]:
    """:func:`run_once`, also saying whether a task was taken at all."""
    task = participant.client.held_task()
    resumed = task is not None
    task = task or participant.next_task(wait)
    if task is None:
        on_event("idle", {"wait": wait})
        return False, None
    plan = task.plan
    on_event(
        "task",
        {
            "task_id": task.task_id,
            "round": task.round_number,
            "strategy": plan.strategy,
            "rank": plan.lora.rank,
            "dp": plan.dp.mode.value,
            **({"resumed": True} if resumed else {}),
            **({"evaluate_only": True} if plan.evaluate_only else {}),
        },
    )
    evaluated = evaluate_global(participant, task, on_event)
    if plan.evaluate_only:  # the evaluation pass: the report was the task's whole result
        if not evaluated:
            try:
                participant.release(task, NO_EVALUATION_DATA)
                on_event("released", {"task_id": task.task_id, "reason": NO_EVALUATION_DATA})
            except FedloraClientError as error:
                log.warning("task %s: could not release it: %s", task.task_id, error)
        else:
            participant.client.forget_task(task.task_id)
        return True, None
    try:
        result = participant.train(task)
    except Exception as exc:  # whatever stops training, the round must not wait for it
        try:
            participant.release(task, _reason(exc))
            on_event("released", {"task_id": task.task_id, "reason": _reason(exc)})
        except FedloraClientError as error:
            log.warning("task %s: could not release it: %s", task.task_id, error)
        raise
    on_event("trained", {"task_id": task.task_id, **result.metrics, **_eps(result.extra)})
    try:
        session = participant.submit(task, result)
    except (NotFoundError, ConflictError) as exc:  # lease expired or round closed meanwhile
        participant.client.discard_upload(task.task_id)
        on_event("task_lost", {"task_id": task.task_id, "reason": str(exc)})
        return True, None
    on_event("uploaded", {"task_id": task.task_id, "update_id": session.update_id})
    return True, session


def _eps(extra: dict[str, object]) -> dict[str, object]:
    return {"epsilon": extra.get("epsilon", 0.0)}


def participate(
    participant: Participant,
    *,
    wait: float = 30.0,
    max_rounds: int = 0,
    stop_when_idle: bool = False,
    on_event: Event = _quiet,
) -> int:
    """Loop :func:`run_once`; returns the number of updates accepted (``max_rounds`` counts
    those; the evaluation pass after a federation's last round is taken but not counted).

    The model and data are checked before any task is taken (:meth:`Participant.check_ready`);
    if they fail, a task an earlier run left leased is released with the error as its reason.
    """
    try:
        participant.check_memberships()
    except ConfigError as exc:
        release_held(participant, exc, on_event)
        raise
    done = resume_pending(participant, on_event)
    while max_rounds == 0 or done < max_rounds:
        try:
            took, session = _step(participant, wait=wait, on_event=on_event)
        except PrivacyBudgetExceededError as exc:
            on_event("refused", {"reason": str(exc)})
            raise
        if session is None:
            if stop_when_idle and not took:
                break
            if not took:  # a federation joined meanwhile needs our fingerprint
                participant.check_memberships()
            continue  # an evaluation-only task (or a lost one) is not an accepted update
        done += 1
    return done


def run(
    config: ClientConfig | str | Path,
    *,
    transport: httpx.BaseTransport | None = None,
    progress: bool = True,
    on_event: Event = _quiet,
) -> int:
    """Participate as ``client.toml`` says (enroll first). Returns updates accepted."""
    cfg = config if isinstance(config, ClientConfig) else ClientConfig.load(config)
    client = FedloraClient.from_file(
        cfg.credentials_path, state_dir=cfg.state_dir, transport=transport
    )
    with client:
        client.report_hardware(detect_hardware(cfg.model.device))
        participant = Participant(
            client,
            cfg.model.path,
            cfg.data.path,
            fields=cfg.data.fields(),
            device=cfg.model.device,
            epsilon_budget=cfg.privacy.epsilon_budget,
            accountant=cfg.privacy.accountant,
            progress=progress,
            eval_data=cfg.data.eval_path,
            eval_fraction=cfg.data.eval_fraction,
            eval_max_examples=cfg.data.eval_max_examples,
        )
        return participate(
            participant,
            wait=cfg.run.wait_seconds,
            max_rounds=cfg.run.max_rounds,
            stop_when_idle=cfg.run.stop_when_idle,
            on_event=on_event,
        )
