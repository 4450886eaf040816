"""The demo's own data: seeded, varied, label-skewed across organizations."""

from collections import Counter
from pathlib import Path

import pytest

from fedlora.demo_data import dirichlet_split, generate_sentiment, read_tsv, write_tsv


def test_generation_is_seeded_balanced_and_varied() -> None:
    a = generate_sentiment(400, seed=3)
    assert a == generate_sentiment(400, seed=3)
    assert a != generate_sentiment(400, seed=4)
    assert Counter(e.label for e in a) == {0: 200, 1: 200}
    assert len({e.text for e in a}) > 300  # templated, but not a handful of repeats


def test_dirichlet_split_is_a_partition_with_label_skew() -> None:
    data = generate_sentiment(800, seed=0)
    shares = dirichlet_split(data, 4, alpha=0.3, seed=1)
    assert sorted(e.text for s in shares for e in s) == sorted(e.text for e in data)
    assert min(len(s) for s in shares) >= 8
    positive_rates = [sum(e.label for e in s) / len(s) for s in shares]
    assert max(positive_rates) - min(positive_rates) > 0.3  # non-IID, not a uniform shuffle


def test_split_refuses_too_little_data() -> None:
    with pytest.raises(ValueError, match="too few"):
        dirichlet_split(generate_sentiment(10), 4, alpha=1.0, seed=0)


def test_tsv_round_trip_and_header_check(tmp_path: Path) -> None:
    data = generate_sentiment(20, seed=2)
    write_tsv(data, tmp_path / "d.tsv")
    assert read_tsv(tmp_path / "d.tsv") == data
    (tmp_path / "bad.tsv").write_text("foo\tbar\n1\t2\n")
    with pytest.raises(ValueError, match="'sentence' \\(or 'text'\\) and 'label'"):
        read_tsv(tmp_path / "bad.tsv")


def test_reads_sst2(sst2_dir: Path) -> None:
    rows = read_tsv(sst2_dir / "dev.tsv", limit=50)
    assert len(rows) == 50
    assert {r.label for r in rows} <= {0, 1}
