"""Fixtures for every test package."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shared_data import shared_data


@pytest.fixture
def sst2_dir() -> Path:
    """``../shared/data/sst2`` (train.tsv, dev.tsv): skipped when absent, required in CI."""
    return shared_data("sst2")
