"""Held-out accuracy of a published global adapter (the demo's and benchmarks' yardstick).

The adapter is loaded exactly as a user would load it: ``PeftModel.from_pretrained`` on the
base sequence-classification model, from the PEFT folder the API serves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from fedlora.demo_data import Example


@dataclass(frozen=True)
class Score:
    """Held-out scores of one adapter.

    ``accuracy`` is argmax accuracy. ``auc`` is the ROC AUC of the logit margin
    ``logit[1] - logit[0]`` (binary tasks; NaN otherwise): threshold-free, so it shows whether
    the model ranks examples well even when its decision threshold is off, which is how
    label-skewed federations typically fail (a learned ranking with a biased head).
    """

    accuracy: float
    auc: float


def roc_auc(margins: torch.Tensor, labels: torch.Tensor) -> float:
    """P(margin of a random positive > margin of a random negative), ties counted half."""
    pos, neg = margins[labels == 1], margins[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)


class Evaluator:
    def __init__(
        self, model_path: Path, examples: Sequence[Example], max_seq_len: int, batch: int = 64
    ) -> None:
        self.model_path = model_path
        # Sorted by length, so each batch can drop the padding columns none of its rows use.
        examples = sorted(examples, key=lambda e: len(e.text))
        self.labels = torch.tensor([e.label for e in examples])
        tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
        self.inputs = tokenizer(
            [e.text for e in examples],
            truncation=True,
            max_length=max_seq_len,
            padding=True,
            return_tensors="pt",
        )
        self.batch = batch

    def baseline(self) -> float:
        """Accuracy of always answering the most common label (what 'learned nothing' scores)."""
        counts = Counter(self.labels.tolist())
        return max(counts.values()) / len(self.labels)

    def accuracy(self, adapter_dir: Path) -> float:
        return self.score(adapter_dir).accuracy

    def score(self, adapter_dir: Path) -> Score:
        out = self.logits(adapter_dir)
        accuracy = float((out.argmax(-1) == self.labels).double().mean())
        auc = roc_auc(out[:, 1] - out[:, 0], self.labels) if out.shape[1] == 2 else float("nan")
        return Score(accuracy, auc)

    @torch.no_grad()
    def logits(self, adapter_dir: Path) -> torch.Tensor:
        """The adapter's logits on every held-out example (in :attr:`labels` order)."""
        # The base checkpoint has no classification head, so transformers logs a "classifier
        # MISSING ... Consider training" report, and draws a progress bar, every round. The
        # adapter carries the trained head (modules_to_save), so the report is expected: both
        # are silenced while the base loads (errors still show; a failed load still raises).
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            base = AutoModelForSequenceClassification.from_pretrained(
                str(self.model_path), num_labels=2, local_files_only=True
            )
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
        model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
        logits = []
        for start in range(0, len(self.labels), self.batch):
            chunk = {k: v[start : start + self.batch] for k, v in self.inputs.items()}
            width = int(chunk["attention_mask"].sum(1).max())  # right padding: exact to trim
            chunk = {k: v[:, :width] for k, v in chunk.items()}
            logits.append(model(**chunk).logits.float())
        return torch.cat(logits)
