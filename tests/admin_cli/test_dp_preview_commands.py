"""The DP preview in the ``fedlora`` admin commands, against the real API over HTTP: ``federation
create`` (and its ``--dry-run``) prints the draft's preview on stderr, ``federation dp-preview``
an existing federation's, each as a table (organization size, batch, steps/round, sigma,
epsilon, noise-to-signal) followed by the warnings.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.admin_cli.test_commands import Cli, _admin, _login
from tests.api.factories import SPEC

HEADER = ("organization size", "batch", "steps/round", "σ", "ε", "noise-to-signal")
# SPEC: two 8 x 6 modules, no head; client-level DP trains A and B: 2 (8 r + r 6) at rank 4
D_RANK_4 = 2 * (8 * 4 + 4 * 6)


@pytest.fixture
def cli(live_url: str, tmp_path: Path) -> Cli:
    return Cli(live_url, tmp_path / "home")


def _create(*extra: str, name: str = "f", clients: int = 3) -> list[str]:
    return ["federation", "create", "--name", name, "--model-spec", "-", "--base-model-id", "m",
            "--global-rank", "4", "--rounds", "2", "--clients-per-round", str(clients),
            *extra]  # fmt: skip


def _rows(shown: str) -> dict[int, list[str]]:
    """The preview table's rows by organization size: the cells after 'N examples'."""
    rows: dict[int, list[str]] = {}
    for line in shown.splitlines():
        words = [w for w in line.split() if w not in ("│", "┃")]  # the column rules
        if len(words) > 2 and words[1] == "examples" and words[0].replace(",", "").isdigit():
            rows[int(words[0].replace(",", ""))] = words[2:]
    return rows


def _shows(shown: str, preview: dict[str, Any]) -> None:
    """``shown`` is ``preview`` as a table: each row's batch, steps, sigma, epsilon and
    noise-to-signal (3 significant digits), then every warning."""
    header = next(line for line in shown.splitlines() if "organization size" in line)
    assert [h in header for h in HEADER] == [True] * len(HEADER), header
    rows = _rows(shown)
    assert sorted(rows) == [r["num_examples"] for r in preview["rows"]]
    for row in preview["rows"]:
        ratio = row["noise_to_signal"]
        assert rows[row["num_examples"]] == [
            f"{row['logical_batch']:,}", str(row["steps_per_round"]),
            f"{row['noise_multiplier']:.3g}", f"{row['epsilon']:.3g}",
            "—" if ratio is None else f"{ratio:.3g}",
        ], (rows, row)  # fmt: skip
    flat = " ".join(shown.split())
    for warning in preview["warnings"]:
        assert f"warning {warning['message']}" in flat


def test_dry_run_prints_the_drafts_preview_and_the_body_stays_json(cli: Cli) -> None:
    _login(cli)
    spec = SPEC.model_dump_json()
    done = cli(*_create("--dp", "sample", "--target-epsilon", "8", "--size", "800",
                        "--size", "20000", "--dry-run"), stdin=spec)  # fmt: skip
    request = json.loads(done.stdout)  # stdout is still the request body alone
    assert request["dp"] == {"mode": "sample", "target_epsilon": 8.0}
    with _admin(cli) as admin:
        assert admin.federations() == []  # a dry run creates nothing
        preview = admin.dp_preview(
            {"model": SPEC.model_dump(mode="json"), "global_rank": 4, "num_rounds": 2,
             "clients_per_round": 3, "training": {}, "dp": request["dp"],
             "dataset_sizes": [800, 20000]}
        )  # fmt: skip
    shown = done.stderr
    assert "DP preview: sample-level DP, 2 rounds, 3 organizations per round, rank 4" in shown
    _shows(shown, preview)
    # the noise is calibrated to the target: epsilon 8 after both rounds, for both sizes
    assert [row["epsilon"] for row in preview["rows"]] == pytest.approx([8.0, 8.0], abs=0.02)
    assert "noise-to-signal: one DP-SGD step of one organization" in " ".join(shown.split())
    assert "warning" not in shown  # a tiny model with large batches: nothing to warn about


def test_client_level_dp_with_few_organizations_is_warned_before_it_is_created(cli: Cli) -> None:
    _login(cli)
    done = cli(*_create("--dp", "client", "--noise-multiplier", "1", "--epsilon-budget", "50"),
               stdin=SPEC.model_dump_json())  # fmt: skip
    fid = done.stdout.strip()
    assert uuid.UUID(fid)  # stdout is still the id alone; the preview went to stderr
    shown = " ".join(done.stderr.split())
    assert "DP preview: client-level DP, 2 rounds, 3 organizations per round, rank 4" in shown
    assert f"{D_RANK_4} noised parameters" in shown
    assert (
        "warning client-level DP adds noise the size of one whole update to an average over 3 "
        "organizations; meaningful with many (hundreds) per round" in shown
    )
    # the noises of 3 clients average to sigma sqrt(d / 3) against an update of norm C
    ratio = f"{math.sqrt(D_RANK_4 / 3):.3g}"
    assert [cells[-1] for cells in _rows(done.stderr).values()] == [ratio] * 3
    assert "warning the noise outweighs the signal" in shown
    assert shown.index("DP preview") < shown.index("created federation f (draft)")

    # the same federation later: dp-preview by name, for the sizes asked for
    listed = cli("federation", "dp-preview", "f", "--size", "1000", "--size", "20000").stdout
    with _admin(cli) as admin:
        preview = admin.federation_dp_preview(fid, [1000, 20000])
    assert preview["dataset_sizes_from"] == "request"
    assert preview["warnings"][0]["code"] == "client_level_few_clients"
    _shows(listed, preview)
    assert "for the sizes asked for" in listed
    # no size given and no member has reported one: the defaults
    assert sorted(_rows(cli("federation", "dp-preview", fid).stdout)) == [500, 5000, 50000]


def test_settings_no_noise_can_meet_are_refused_before_anything_is_created(cli: Cli) -> None:
    _login(cli)
    unreachable = ("--dp", "client", "--target-epsilon", "0.000001")
    for extra in ((), ("--dry-run",)):
        refused = cli.fails(*_create(*unreachable, *extra), stdin=SPEC.model_dump_json())
        assert "the server answered 422: dp: no noise multiplier" in refused
    with _admin(cli) as admin:
        assert admin.federations() == []


def test_without_dp_the_preview_is_one_warning(cli: Cli) -> None:
    _login(cli)
    done = cli(*_create("--dp", "none"), stdin=SPEC.model_dump_json())
    assert "warning DP is off: the uploads carry no privacy guarantee" in done.stderr
    assert "organization size" not in done.stderr  # no table of infinite epsilons


def test_a_dry_run_without_a_server_still_prints_the_body(tmp_path: Path) -> None:
    offline = Cli("http://127.0.0.1:9", tmp_path / "home")
    offline.env.update({"FEDLORA_URL": offline.url, "FEDLORA_TOKEN": "t"})
    done = offline(*_create("--dp", "none", "--dry-run"), stdin=SPEC.model_dump_json())
    assert json.loads(done.stdout)["dp"] == {"mode": "none"}
    assert "no DP preview (it needs the server): cannot reach http://127.0.0.1:9" in done.stderr
    offline.env.update({"FEDLORA_URL": "", "FEDLORA_TOKEN": ""})
    done = offline(*_create("--dp", "none", "--dry-run"), stdin=SPEC.model_dump_json())
    assert "no DP preview (it needs the server): not logged in" in done.stderr
    helped = " ".join(offline("federation", "dp-preview", "--help").stdout.split())
    assert "noise-to-signal" in helped
    assert "--size" in helped
