"""The pure parts of bench/quality.py: run planning, resume, data split, table building."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fedlora.demo_data import Example

STRATEGIES = ["fedavg", "hetlora", "flora", "flexlora", "fslora", "sdflora", "prelort"]


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "quality.py"
    spec = importlib.util.spec_from_file_location("bench_quality", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = module
    spec.loader.exec_module(module)
    return module


def _record(q: ModuleType, spec: Any, accs: list[float], size: int = 1000) -> dict[str, Any]:
    rounds = [
        {"round": i + 1, "accuracy": a, "auc": a + 0.1, "upload_bytes_mean": size}
        for i, a in enumerate(accs)
    ]
    rec: dict[str, Any] = q.record(spec, rounds, 10.0)
    return rec


def test_full_plan_covers_every_strategy_seed_ablation_and_privacy(quality: ModuleType) -> None:
    mode = quality.MODES["full"]
    runs = quality.plan_runs(mode, STRATEGIES, "fedavg", {})
    keys = [r.key for r in runs]
    assert len(keys) == len(set(keys))
    no_dp = [r for r in runs if r.dp == "none"]
    per_seed = {r.method for r in no_dp if r.seed == 0}
    assert per_seed == {
        *STRATEGIES,
        "fedavg-r2",
        "centralized-r16",
        "flexlora-rank-normalization-on",
        "fedavg-no-label-balance",
        "fedavg-no-server-optimizer",
        "fedavg-constant-lr",
        "fedavg-no-threshold-calibration",
    }
    assert len(no_dp) == 3 * len(per_seed)  # every non-DP row with three seeds
    r2 = next(r for r in runs if r.method == "fedavg-r2")
    assert (r2.global_rank, r2.budgets) == (2, tuple(quality.BUDGETS))
    ablation = next(r for r in runs if r.method == "fedavg-no-server-optimizer")
    assert dict(ablation.server) == {"name": "none"}
    constant = next(r for r in runs if r.method == "fedavg-constant-lr")
    assert dict(constant.training) == {"lr_schedule": "constant"}
    assert dict(constant.server) == {"lr_schedule": "constant"}
    sample = [r for r in runs if r.dp == "sample"]
    assert {(r.method, r.epsilon) for r in sample} == {
        (m, e) for m in ("fedavg", "centralized-dp-sgd-r16") for e in (8.0, 2.0)
    }
    assert all(r.seed == 0 for r in sample)
    assert runs.index(sample[0]) > max(runs.index(r) for r in no_dp)  # DP rows come last


def test_quick_plan_runs_every_strategy(quality: ModuleType) -> None:
    runs = quality.plan_runs(quality.MODES["quick"], STRATEGIES, "fedavg", {})
    assert {r.strategy for r in runs} >= set(STRATEGIES)
    assert any(r.dp == "sample" for r in runs)
    assert not any(r.method.endswith("-constant-lr") for r in runs)  # no ablations


def test_resume_keeps_finished_runs_and_refuses_other_settings(
    quality: ModuleType, tmp_path: Path
) -> None:
    mode = quality.MODES["quick"]
    spec = quality.plan_runs(mode, STRATEGIES, "fedavg", {})[0]
    done = {spec.key: _record(quality, spec, [0.6, 0.7])}
    path = tmp_path / "quality.json"
    quality.save_results(path, mode, done, {"baseline_accuracy": 0.5})
    again = quality.load_results(path, mode)
    assert set(again) == {spec.key}
    left = [s for s in quality.plan_runs(mode, STRATEGIES, "fedavg", again) if s.key not in again]
    assert spec.key not in {s.key for s in left}
    assert len(left) == len(quality.plan_runs(mode, STRATEGIES, "fedavg", {})) - 1
    assert json.loads(path.read_text())["runs"][0]["final_accuracy"] == 0.7
    with pytest.raises(SystemExit):
        quality.load_results(path, quality.MODES["full"])
    assert quality.load_results(tmp_path / "missing.json", mode) == {}


def test_split_is_seeded_label_skewed_and_complete(quality: ModuleType) -> None:
    train = [Example(f"s{i}", i % 2) for i in range(800)]
    a, b = quality.split(train, 0), quality.split(train, 0)
    assert a == b
    assert quality.split(train, 1) != a
    assert len(a) == len(quality.BUDGETS)
    assert sorted(e.text for s in a for e in s) == sorted(e.text for e in train)
    positive = [sum(e.label for e in s) / len(s) for s in a]
    assert max(positive) - min(positive) > 0.3  # alpha 0.3 is strongly non-IID


def test_table_mean_spread_and_order(quality: ModuleType, tmp_path: Path) -> None:
    mode = quality.MODES["full"]
    runs = quality.plan_runs(mode, STRATEGIES, "fedavg", {})
    hets = [r for r in runs if r.method == "hetlora" and r.dp == "none"]
    dp = next(r for r in runs if r.method == "fedavg" and r.dp == "sample")
    recs = [_record(quality, s, [0.6, a]) for s, a in zip(hets, [0.8, 0.82, 0.84], strict=True)]
    recs.append(_record(quality, dp, [0.55, 0.7], size=2048))
    table = quality.build_table(recs, 0.51)
    lines = [line for line in table.splitlines() if line.startswith(("| hetlora", "| fedavg"))]
    assert len(lines) == 2
    assert "| none | 0.820 ± 0.020 (n=3) |" in lines[0]
    assert "| 0.920 ± 0.020 (n=3) |" in lines[0]  # final AUC
    assert "| 0.220 ± 0.020 (n=3) |" in lines[0]  # last-5-rounds band: 0.6 to the final
    assert "sample eps=8" in lines[1]
    assert "| 0.700 |" in lines[1]
    assert "| 2.0 |" in lines[1]
    assert "0.510" in table
    quality.plot(recs, tmp_path / "quality.png", 0.51)  # accuracy and AUC panels
    assert (tmp_path / "quality.png").stat().st_size > 10_000


def test_federation_body_uses_the_platform_defaults_and_the_rows_changes(
    quality: ModuleType,
) -> None:
    mode = quality.MODES["full"]
    runs = quality.plan_runs(mode, STRATEGIES, "fedavg", {})
    spec = next(r for r in runs if r.method == "fedavg" and r.epsilon == 2.0)
    body = quality.federation_body(spec, mode, {"modules": {}})
    assert body["strategy"] == "fedavg"
    assert body["dp"] | {"mode": "sample", "target_epsilon": 2.0, "delta": 1e-5} == body["dp"]
    # only the benchmark's budget is set: optimizer, rates and DP recipe are the defaults
    assert body["training"] == {"steps": 5, "batch_size": 32, "max_seq_len": 64}
    assert "server_optimizer" not in body
    assert body["clients_per_round"] == len(quality.BUDGETS)
    ablation = next(r for r in runs if r.method == "fedavg-no-label-balance")
    assert quality.federation_body(ablation, mode, {})["training"]["label_balance"] == "none"
    uncalibrated = next(r for r in runs if r.method == "fedavg-no-threshold-calibration")
    body = quality.federation_body(uncalibrated, mode, {})
    assert body["training"]["threshold_calibration"] == "none"
    off = next(r for r in runs if r.method == "fedavg-no-server-optimizer")
    assert quality.federation_body(off, mode, {})["server_optimizer"]["name"] == "none"
    flex = next(r for r in runs if r.method == "flexlora-rank-normalization-on")
    assert quality.federation_body(flex, mode, {})["strategy_params"] == {
        "rank_normalization": True
    }
    plain = next(r for r in runs if r.method == "hetlora" and r.dp == "none")
    assert quality.federation_body(plain, mode, {})["dp"] == {"mode": "none"}


def test_dp_rows_say_what_each_organization_ran(quality: ModuleType) -> None:
    clients = ["a", "b"]

    def upload(cid: str, n: int, sigma: float, seen: float, clipped: float) -> dict[str, Any]:
        metrics = {"noise_multiplier": sigma, "examples_seen": seen, "steps": 2.0,
                   "dp_clipped_fraction": clipped, "dp_clipped_fraction_head": 0.0}  # fmt: skip
        return {"client_id": cid, "num_examples": n, "lora": {"rank": 4}, "metrics": metrics}

    # listed in the clients' order whatever the order of the uploads
    ups = [upload("b", 16000, 0.8, 4000.0, 0.5), upload("a", 300, 2.0, 600.0, 0.1)]
    rows = quality.dp_used(ups, clients)
    assert [(r["num_examples"], r["logical_batch"], r["steps"]) for r in rows] == [
        (300, 300.0, 2),
        (16000, 2000.0, 2),
    ]
    # no DP: no rows (sigma 0, or no clipping metrics)
    assert quality.dp_used([upload("a", 300, 0.0, 600.0, 0.0)], clients) == []
    spec = next(r for r in quality.plan_runs(quality.MODES["full"], ["fedavg"], "fedavg", {})
                if r.dp == "sample")  # fmt: skip
    rec = _record(quality, spec, [0.6, 0.7])
    rec["rounds"][0]["dp"] = rows
    rec["rounds"][1]["dp"] = quality.dp_used(
        [upload("a", 300, 2.0, 600.0, 0.3), upload("b", 16000, 0.8, 4000.0, 0.7)], clients
    )
    table = quality.build_table([rec], 0.5)
    assert "| 16000 | 4 | 0.800 | 2000 | 2 | 0.60 | 0.00 |" in table  # clipped: mean of 0.5, 0.7
    assert "| 300 | 4 | 2.000 | 300 | 2 | 0.20 | 0.00 |" in table
