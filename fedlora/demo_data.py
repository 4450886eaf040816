"""Data for the demo federation: generated here, or read from a text/label TSV.

The repository ships no third-party data, so by default the demo writes its own sentiment
corpus: seeded, varied templated sentences (subjects, verbs, intensifiers, negations, objects)
with binary labels. Organizations get label-skewed, non-IID shares through a Dirichlet split.
``--data PATH`` replaces the generated corpus by any TSV with a header ``sentence<TAB>label``
(for example SST-2).
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SUBJECTS = [
    "the film",
    "this movie",
    "the plot",
    "the acting",
    "the soundtrack",
    "the director's work",
    "the story",
    "the cast",
    "this sequel",
    "the script",
    "the ending",
    "the cinematography",
    "the dialogue",
    "the pacing",
    "the lead performance",
    "this documentary",
    "the animation",
]
_POSITIVE = [
    "wonderful",
    "moving",
    "brilliant",
    "charming",
    "gripping",
    "delightful",
    "beautiful",
    "funny",
    "smart",
    "heartfelt",
    "stunning",
    "engaging",
    "masterful",
    "fresh",
    "memorable",
]
_NEGATIVE = [
    "dull",
    "tedious",
    "clumsy",
    "boring",
    "predictable",
    "messy",
    "lifeless",
    "forgettable",
    "shallow",
    "painful",
    "bland",
    "incoherent",
    "tiresome",
    "flat",
    "awkward",
]
_INTENSIFIERS = ["", "", "really ", "truly ", "quite ", "remarkably ", "utterly ", "so "]
_VERBS = ["is", "was", "feels", "seems", "turned out", "comes across as"]
_TAILS = [
    "",
    "",
    " from start to finish",
    " in every scene",
    " despite its length",
    " for a family night",
    " by any standard",
    " and I would say so again",
]
_POS_OPENERS = ["", "", "honestly, ", "I think ", "without a doubt, ", "frankly, "]


@dataclass(frozen=True)
class Example:
    text: str
    label: int


def _sentence(rng: random.Random, label: int) -> str:
    negate = rng.random() < 0.2
    # A negated opposite word keeps the label: "not dull" is positive.
    pool_positive = (label == 1) != negate
    word = rng.choice(_POSITIVE if pool_positive else _NEGATIVE)
    intens = "" if negate else rng.choice(_INTENSIFIERS)
    neg = "not " if negate else ""
    text = (
        f"{rng.choice(_POS_OPENERS)}{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} "
        f"{neg}{intens}{word}{rng.choice(_TAILS)}"
    )
    return text.strip()


def generate_sentiment(n: int, *, seed: int = 0) -> list[Example]:
    """``n`` balanced, seeded sentiment examples."""
    rng = random.Random(seed)
    return [Example(_sentence(rng, i % 2), i % 2) for i in range(n)]


def read_tsv(path: Path, *, limit: int | None = None) -> list[Example]:
    """Read a ``sentence<TAB>label`` TSV with a header (SST-2 layout)."""
    examples: list[Example] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        fields = reader.fieldnames or []
        text_col = next((c for c in ("sentence", "text") if c in fields), None)
        if text_col is None or "label" not in fields:
            raise ValueError(
                f"{path}: expected a header with 'sentence' (or 'text') and 'label' columns, "
                f"found {fields}"
            )
        for row in reader:
            examples.append(Example(row[text_col].strip(), int(row["label"])))
            if limit is not None and len(examples) >= limit:
                break
    return examples


def dirichlet_split(
    examples: Sequence[Example], n_clients: int, *, alpha: float, seed: int, min_size: int = 8
) -> list[list[Example]]:
    """Label-skewed split: each label's examples are shared by Dirichlet(alpha) proportions.

    Small ``alpha`` gives strongly non-IID shares. Every client gets at least ``min_size``
    examples (re-drawn until it does), so no organization is left without data.
    """
    if n_clients < 1:
        raise ValueError("n_clients must be at least 1")
    if len(examples) < n_clients * min_size:
        raise ValueError(f"{len(examples)} examples are too few for {n_clients} clients")
    rng = np.random.default_rng(seed)
    labels = np.array([e.label for e in examples])
    for _ in range(100):
        shares: list[list[int]] = [[] for _ in range(n_clients)]
        for label in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet([alpha] * n_clients)) * len(idx)).astype(int)[:-1]
            for client, part in enumerate(np.split(idx, cuts)):
                shares[client].extend(part.tolist())
        if min(len(s) for s in shares) >= min_size:
            return [[examples[i] for i in rng.permutation(s)] for s in shares]
    raise ValueError(f"could not give every client {min_size} examples; raise alpha")


def write_tsv(examples: Sequence[Example], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        writer.writerow(["text", "label"])
        for e in examples:
            writer.writerow([e.text.replace("\t", " "), e.label])
