"""``Participant``: one organization's side of a federation, from task to accepted update.

High level: :meth:`Participant.run` (or :func:`run`) long-polls, checks the fingerprint, trains
the plan with DP, uploads and reports, round after round. Lower level, for your own training
loop: :meth:`next_task`, :meth:`start_model` (the starting adapter as a PEFT model, merged and
with the private module as the plan says), :meth:`train` and :meth:`submit_model`.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from fedlora_client import protocol as p
from fedlora_client._accounting import AccountantName, LedgerEntry, PrivacyLedger
from fedlora_client._adapters import TRAINED, adapter_tensors, build_peft_model
from fedlora_client._client import FedloraClient
from fedlora_client._data import (
    DataFields,
    DataSource,
    EncodedData,
    check_data,
    encode_data,
    holdout_split,
    load_records,
)
from fedlora_client._errors import (
    FingerprintMismatchError,
    NotFoundError,
    PrivacyBudgetExceededError,
    PrivacyError,
)
from fedlora_client._model import (
    check_model_dir,
    load_base_model,
    load_tokenizer,
    model_fingerprint,
)
from fedlora_client._privacy import (
    ensure_uploadable,
    privatize_update,
    resolve_noise_multiplier,
    secure_generator,
)
from fedlora_client._training import RoundResult, evaluate, num_labels_of, train_round
from fedlora_client.calibration import margin_histogram

log = logging.getLogger("fedlora_client")

BASE_CACHE_BYTES = 2 << 30
"""Base models up to this size stay in memory between tasks (see ``Participant.base_model``)."""

EVAL_FRACTION = 0.1
"""Share of the data file held out for evaluation when no eval_path is given."""
EVAL_MAX_EXAMPLES = 1000
"""At most this many held-out rows (evaluation runs every round)."""
EVAL_MIN_EXAMPLES = 5
"""Fewer held-out rows than this would say nothing: then nothing is held out."""


def _num_labels(spec: p.ModelSpec) -> int:
    """Classes of a seq-cls federation: the first dimension of its head's weight."""
    for key, shape in spec.extra_trainable.items():
        if key.endswith(".weight"):
            return int(shape[0])
    return 2


class Participant:
    """A local base model + local data, taking part through a :class:`FedloraClient`."""

    def __init__(
        self,
        client: FedloraClient,
        model_path: str | Path,
        data: DataSource,
        *,
        fields: DataFields | None = None,
        device: str = "cpu",
        epsilon_budget: float | None = None,
        accountant: AccountantName = "rdp",
        progress: bool = True,
        noise_seed: int | None = None,
        eval_data: DataSource | None = None,
        eval_fraction: float = EVAL_FRACTION,
        eval_max_examples: int = EVAL_MAX_EXAMPLES,
    ) -> None:
        self.client = client
        self.model_path = Path(model_path)
        self.data = data
        self.fields = fields or DataFields()
        self.device = device
        self.epsilon_budget = epsilon_budget
        self.accountant: AccountantName = accountant
        self.progress = progress
        self.noise_seed = noise_seed
        self.eval_data = eval_data
        self.eval_fraction = eval_fraction
        self.eval_max_examples = eval_max_examples
        self._split: tuple[list[int], list[int]] | None = None
        self.ledger = PrivacyLedger(client.state_dir / "privacy_ledger.json")
        self._fingerprint: str | None = None
        self._base_cache: dict[tuple[str, int, str], Any] = {}
        self._encoded: dict[tuple[str, int, bool], EncodedData] = {}
        self._server_spent: dict[str, float] = {}
        self._ready: set[tuple[str, int] | None] = set()

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model_path)
        return self._fingerprint

    # ------------------------------------------------------------------ membership and tasks

    def check_ready(self, memberships: list[p.MembershipInfo] | None = None) -> None:
        """Check that this participant can train, before it takes any task.

        The model directory loads its config and tokenizer, and the training (and evaluation)
        data exist with the columns and labels each federation's task needs (``memberships``;
        none: only that the files read). Raises :class:`ModelLoadError` or a
        :class:`DataError` that names what to fix. Each kind of task is checked once.
        """
        kinds: set[tuple[str, int] | None] = {
            (m.task_type.value, _num_labels(m.model)) for m in memberships or []
        } or {None}
        if not kinds - self._ready:
            return
        if not self._ready:
            check_model_dir(self.model_path)
        for kind in sorted(kinds - self._ready, key=str):
            for source in (self.data, self.eval_data):
                if source is None:
                    continue
                if kind is None:
                    load_records(source)
                else:
                    check_data(source, kind[0], fields=self.fields, num_labels=kind[1])
            self._ready.add(kind)

    def check_memberships(self) -> list[p.MembershipInfo]:
        """Check the model and data (:meth:`check_ready`), then report the local fingerprint to
        every federation (which makes this client eligible for its rounds); raise if one
        expects another model."""
        memberships = self.client.memberships()
        self.check_ready(memberships)
        for membership in memberships:
            self._server_spent[membership.federation_id] = membership.epsilon_spent
            if membership.model.fingerprint != self.fingerprint:
                raise FingerprintMismatchError(self.fingerprint, membership.model.fingerprint)
            if membership.fingerprint_reported != self.fingerprint:
                self.client.report_fingerprint(membership.federation_id, self.fingerprint)
        return memberships

    def next_task(self, wait: float = 30.0) -> p.TaskAssignment | None:
        """The task this client still holds from an earlier run, else a new one (long-poll)."""
        return self.client.next_task(wait)

    def release(self, task: p.TaskAssignment, reason: str) -> None:
        """Give ``task`` back (this client cannot train it); the admin sees ``reason``."""
        self.client.release_task(task.task_id, reason)

    def _artifact(self, task: p.TaskAssignment, kind: str, ref: p.ArtifactRef) -> Any:
        dest = self.client.state_dir / "artifacts" / f"{ref.sha256}.safetensors"
        if not dest.is_file():
            self.client.download(task.task_id, kind, ref, dest)  # type: ignore[arg-type]
        return load_file(str(dest))

    def _private_path(self, task: p.TaskAssignment) -> Path:
        return self.client.state_dir / "private" / f"{task.federation_id}.safetensors"

    def base_model(self, plan: p.TrainingPlan) -> Any:
        """A fresh copy of the local base model for ``plan`` (the PEFT wrapping changes it).

        Loaded from disk once and copied in memory for later tasks while it is small enough
        (``BASE_CACHE_BYTES``): a long-running participant then pays the load once, not once
        per round. Larger models are read from disk each time, to keep one copy in memory.
        """
        key = (plan.task_type.value, num_labels_of(plan), self.device)
        cached = self._base_cache.get(key)
        if cached is not None:
            return copy.deepcopy(cached)
        model = load_base_model(
            self.model_path, plan.task_type, num_labels=num_labels_of(plan), device=self.device
        )
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        if size <= BASE_CACHE_BYTES:
            self._base_cache = {key: model}
            return copy.deepcopy(model)
        return model

    def start_model(self, task: p.TaskAssignment) -> Any:
        """The PEFT model the plan trains: base (+ FLoRA merge) + start LoRA (+ private LoRA)."""
        plan = task.plan
        if plan.model.fingerprint != self.fingerprint:
            raise FingerprintMismatchError(self.fingerprint, plan.model.fingerprint)
        start = self._artifact(task, "start", plan.start)
        merge = self._artifact(task, "merge", plan.merge) if plan.merge is not None else None
        private_path = self._private_path(task)
        private = load_file(str(private_path)) if private_path.is_file() else None
        base = self.base_model(plan)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(plan.seed)  # fresh private init is reproducible per plan
            model = build_peft_model(base, plan, start, merge=merge, private=private)
        model.fedlora_start = adapter_tensors(model, TRAINED)  # for submit_model's update
        return model

    def holdout(self) -> tuple[list[int], list[int]] | None:
        """(training rows, evaluation rows) of the data file when no ``eval_data`` is given:
        a seeded, content-hashed ``eval_fraction`` of it (at most ``eval_max_examples``), held
        out every round and never trained on (:func:`holdout_split`). None: nothing held out
        (``eval_data`` given, ``eval_fraction`` 0, or too little data for a useful split)."""
        if self.eval_data is not None or self.eval_fraction <= 0:
            return None
        if self._split is None:
            records, _, src = load_records(self.data)
            self._split = holdout_split(
                records,
                self.eval_fraction,
                max_examples=self.eval_max_examples,
                min_examples=EVAL_MIN_EXAMPLES,
            )
            if not self._split[1]:
                log.warning(
                    "%s: %d rows are too few to hold out %d for evaluation; set data.eval_path "
                    "to report federated evaluation",
                    src, len(records), EVAL_MIN_EXAMPLES,
                )  # fmt: skip
        return self._split if self._split[1] else None

    def encoded_data(self, plan: p.TrainingPlan, *, eval_set: bool = False) -> EncodedData:
        """The training data (without the held-out rows), or the evaluation split."""
        key = (plan.task_type.value, plan.training.max_seq_len, eval_set)
        if key not in self._encoded:
            tokenizer = load_tokenizer(self.model_path)
            split = self.holdout()
            explicit = eval_set and self.eval_data is not None
            self._encoded[key] = encode_data(
                self.eval_data if explicit else self.data,
                plan.task_type,
                tokenizer,
                max_seq_len=plan.training.max_seq_len,
                fields=self.fields,
                num_labels=num_labels_of(plan),
                rows=None if explicit or split is None else split[1 if eval_set else 0],
            )
        return self._encoded[key]

    def evaluation_data(self, plan: p.TrainingPlan) -> EncodedData | None:
        """The evaluation split (``eval_data``, else the held-out rows); None if there is none."""
        if self.eval_data is None and self.holdout() is None:
            return None
        return self.encoded_data(plan, eval_set=True)

    # ------------------------------------------------------------------ federated evaluation

    def global_model(self, task: p.TaskAssignment) -> Any | None:
        """The federation's current model: base + the published global adapter the plan names
        (at that adapter's own rank, with its head), or None when it names none (round 1).

        Not the start of this round's training, which for most strategies is a truncation or
        a slice of the global adapter to this client's rank."""
        plan, ref = task.plan, task.plan.global_adapter
        if ref is None:
            return None
        if plan.model.fingerprint != self.fingerprint:
            raise FingerprintMismatchError(self.fingerprint, plan.model.fingerprint)
        tensors = self._artifact(task, "global", ref)
        base = self.base_model(plan)
        as_published = plan.model_copy(
            update={
                "lora": ref.lora, "start": ref, "merge": None, "private": None,
                "nested_truncations": [], "sketch": None, "tail_penalty": None,
            }
        )  # fmt: skip
        return build_peft_model(base, as_published, tensors)

    def evaluate_global(self, task: p.TaskAssignment) -> p.GlobalEvaluation | None:
        """Evaluate the global adapter the task names on this client's evaluation split.

        None when the plan names no adapter (round 1) or there is no evaluation split. The
        metrics go to the server in the clear: they are not covered by the DP guarantee."""
        ref = task.plan.global_adapter
        data = self.evaluation_data(task.plan) if ref is not None else None
        if ref is None or data is None:
            return None
        model = self.global_model(task)
        margins: list[float] = []
        metrics = evaluate(model, data, margins=margins)
        del model
        histogram = None
        if data.task_type is p.TaskType.SEQ_CLS and len(margins) == len(data):
            labels = [int(t) for t in data.targets]  # type: ignore[arg-type]
            if set(labels) <= {0, 1}:
                histogram = margin_histogram(margins, labels)
        return p.GlobalEvaluation(
            adapter_sha256=ref.sha256,
            num_examples=len(data),
            loss=metrics["eval_loss"],
            accuracy=metrics.get("eval_accuracy"),
            margin_histogram=histogram,
        )

    # ------------------------------------------------------------------ privacy budget

    def _ledger_entry(self, task: p.TaskAssignment, n: int) -> LedgerEntry | None:
        dp, t = task.plan.dp, task.plan.training
        if dp.mode is p.DPMode.NONE:
            return None
        batch, steps = p.local_schedule(t, dp, n)  # what train_round will run
        rate = min(1.0, batch / n)
        sigma = resolve_noise_multiplier(
            dp, sampling_rate=rate, steps=steps, accountant=self.accountant
        )
        if dp.mode is p.DPMode.SAMPLE:
            return LedgerEntry(task.task_id, "sample", sigma, rate, steps)
        return LedgerEntry(task.task_id, "client", sigma, 1.0, 1)

    def check_budget(self, task: p.TaskAssignment, n: int) -> tuple[LedgerEntry | None, float]:
        """(ledger entry, epsilon this task adds); raises if it would exceed the budget."""
        entry = self._ledger_entry(task, n)
        if entry is None:
            return None, 0.0
        dp = task.plan.dp
        before, after = self.ledger.with_entry(task.federation_id, entry, dp.delta, self.accountant)
        # if the local ledger was lost, the server's record of past spending is a floor
        floor = self._server_spent.get(task.federation_id, 0.0)
        if floor > before:
            before, after = floor, floor + (after - before)
        budget = min(dp.epsilon_budget, self.epsilon_budget or dp.epsilon_budget)
        if after > budget:
            raise PrivacyBudgetExceededError(before, after - before, budget)
        return entry, after - before

    # ------------------------------------------------------------------ train and submit

    def train(self, task: p.TaskAssignment, model: Any | None = None) -> RoundResult:
        """Check the budget, then run the plan's local round with DP (SDK training loop)."""
        data = self.encoded_data(task.plan)
        entry, epsilon = self.check_budget(task, len(data))
        model = model if model is not None else self.start_model(task)
        result = train_round(
            model,
            task.plan,
            data,
            progress=self.progress,
            noise_seed=self.noise_seed,
            accountant=self.accountant,
        )
        ensure_uploadable(result.tensors)  # the server's rule, before anything is sent
        if self.eval_data is not None:  # the locally trained model, before client-level noise
            result.metrics.update(evaluate(model, self.encoded_data(task.plan, eval_set=True)))
        if result.private is not None:
            path = self._private_path(task)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_bytes = save(result.private, metadata={"format": "pt"})
            path.write_bytes(save_bytes)
        result.extra.update(ledger_entry=entry, epsilon=epsilon, num_examples=len(data))
        return result

    def submit(self, task: p.TaskAssignment, result: RoundResult) -> p.UploadSession:
        """Record the privacy spend, stage the upload on disk, send it, report metrics."""
        entry: LedgerEntry | None = result.extra.get("ledger_entry")
        epsilon = float(result.extra.get("epsilon", 0.0))
        num_examples = int(result.extra.get("num_examples", 1))
        body = save(result.tensors, metadata={"format": "pt"})

        manifest = p.UploadManifest(
            task_id=task.task_id,
            base_model_fingerprint=self.fingerprint,
            lora=task.plan.lora,
            sha256=hashlib.sha256(body).hexdigest(),
            size=len(body),
            num_examples=max(1, num_examples),
            metrics={k: v for k, v in result.metrics.items() if v == v},  # drop NaN
            epsilon_spent=epsilon,
        )
        if entry is not None:  # counted before the first byte leaves the machine
            self.ledger.record(task.federation_id, entry)
        self.client.stage_upload(manifest, body)
        session = self.client.upload(task.task_id)
        metrics = {**manifest.metrics, "epsilon": epsilon}
        try:
            self.client.report(task.task_id, metrics)
        except NotFoundError:
            log.warning("task %s: report route not available; update accepted", task.task_id)
        return session

    def submit_model(
        self, task: p.TaskAssignment, model: Any, *, num_examples: int, metrics: dict[str, float]
    ) -> p.UploadSession:
        """Upload a PEFT model you trained yourself (client-level DP is applied here).

        Sample-level DP cannot be added after training: with a ``sample`` plan, train with
        :meth:`train` instead.
        """
        plan = task.plan
        if plan.dp.mode is p.DPMode.SAMPLE:
            raise PrivacyError(
                "this federation uses sample-level DP, which must be applied during training: "
                "use Participant.train(task, model) instead of your own loop"
            )
        final = adapter_tensors(model, TRAINED)
        entry, epsilon = self.check_budget(task, num_examples)
        if entry is not None:
            start = getattr(model, "fedlora_start", None)
            if start is None:
                raise PrivacyError("submit_model needs a model from Participant.start_model")
            final = privatize_update(
                start,
                final,
                clip_norm=plan.dp.clip_norm,
                noise_multiplier=entry.noise_multiplier,
                generator=secure_generator(self.noise_seed),
            )
        result = RoundResult(
            {k: final[k].contiguous() for k in plan.upload_shapes()},
            dict(metrics),
            entry.noise_multiplier if entry else 0.0,
            1.0,
        )
        result.extra.update(ledger_entry=entry, epsilon=epsilon, num_examples=num_examples)
        return self.submit(task, result)
