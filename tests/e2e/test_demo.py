"""The README's demo command, as a person runs it: ``scripts/demo --no-serve --out DIR``."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_demo_command_writes_the_adapter_and_a_summary_per_round(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [str(ROOT / "scripts" / "demo"), "--no-serve", "--out", str(out), "--rounds", "2"],
        cwd=tmp_path,  # the demo must not depend on the working directory
        env={**os.environ, "FEDLORA_DATA_DIR": str(tmp_path / "ignored")},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    for r in summary["rounds"]:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["loss"] > 0
        assert r["epsilon"] > 0  # sample-level DP is on by default
        assert sorted(p["rank"] for p in r["participants"]) == [2, 4, 8, 16]
    # round 2's clients scored round 1's adapter on their held-out rows, so the worker
    # calibrated round 2's threshold from their counts (round 1 has nothing to measure)
    first, second = summary["rounds"]
    assert first["calibration"] == {}
    assert second["calibration"]["examples"] > 0
    assert 0.0 <= second["calibration"]["balanced_accuracy_before"] <= 1.0
    assert (
        second["calibration"]["balanced_accuracy_after"]
        >= second["calibration"]["balanced_accuracy_before"]
    )
    assert re.search(r"round 2: accuracy [01]\.\d+ \(majority class [01]\.\d+\)", proc.stdout)
    # a quiet console: no library reports that are expected and say nothing to act on
    client_logs = "".join(p.read_text() for p in (out / "work" / "logs").glob("org-*.log"))
    for noise in ("MISSING", "Consider training", "failed to converge"):
        assert noise not in proc.stdout + proc.stderr, noise
        assert noise not in client_logs, noise
