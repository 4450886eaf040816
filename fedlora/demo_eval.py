"""Held-out accuracy of a published global adapter (the demo's and benchmarks' yardstick).

The adapter is loaded exactly as a user would load it: ``PeftModel.from_pretrained`` on the
base sequence-classification model, from the PEFT folder the API serves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from fedlora.demo_data import Example


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

    @torch.no_grad()
    def accuracy(self, adapter_dir: Path) -> float:
        base = AutoModelForSequenceClassification.from_pretrained(
            str(self.model_path), num_labels=2, local_files_only=True
        )
        model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
        correct = 0
        for start in range(0, len(self.labels), self.batch):
            chunk = {k: v[start : start + self.batch] for k, v in self.inputs.items()}
            width = int(chunk["attention_mask"].sum(1).max())  # right padding: exact to trim
            chunk = {k: v[:, :width] for k, v in chunk.items()}
            predicted = model(**chunk).logits.argmax(-1)
            correct += int((predicted == self.labels[start : start + self.batch]).sum())
        return correct / len(self.labels)
