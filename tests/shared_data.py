"""Data sets that sit beside the checkout in ``../shared/data/`` (not part of the repository).

A fresh clone has nothing beside it, so a test that needs such a data set asks for it through
:func:`shared_data` (or the ``sst2_dir`` fixture in ``tests/conftest.py``): it runs when the
data is there and is skipped with a message naming the path otherwise. CI has the data and sets
``FEDLORA_REQUIRE_SHARED_DATA=1`` (``.ci/run``), which turns that skip into a failure, so a CI
run never passes by silently skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REQUIRE_ENV = "FEDLORA_REQUIRE_SHARED_DATA"


def shared_data(name: str, *, root: Path = SHARED_DATA) -> Path:
    """``root / name`` if it exists; else skip the test, or fail it when CI requires the data."""
    path = root / name
    if path.exists():
        return path
    message = f"{path} is absent (shared data beside the checkout; see README.md, 'Test data')"
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{message}, and {REQUIRE_ENV} is set: this run must have it")
    pytest.skip(message)
