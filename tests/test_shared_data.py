"""The shared-data helper: present -> the path; absent -> skip, or fail where CI requires it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shared_data import REQUIRE_ENV, shared_data


def test_present_data_is_returned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "1")
    (tmp_path / "sst2").mkdir()
    assert shared_data("sst2", root=tmp_path) == tmp_path / "sst2"


def test_absent_data_skips_with_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"{tmp_path / 'sst2'} is absent"):
        shared_data("sst2", root=tmp_path)
    monkeypatch.setenv(REQUIRE_ENV, "0")
    with pytest.raises(pytest.skip.Exception):
        shared_data("sst2", root=tmp_path)


def test_absent_data_fails_where_required(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE_ENV} is set"):
        shared_data("sst2", root=tmp_path)
