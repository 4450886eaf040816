"""The registry and the parameters are torch-free; the CLI lists every strategy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from fedlora.cli import app
from fedlora_client.protocol import STRATEGY_NAMES
from worker.strategies import get_strategy
from worker.strategies.params import (
    RECOMMENDED_STRATEGY,
    STRATEGY_DESCRIPTIONS,
    STRATEGY_PARAMS,
    validate_params,
)


def test_registry_and_params_import_no_torch() -> None:
    code = (
        "import sys, worker.strategies, worker.strategies.params, worker.strategies.errors\n"
        "worker.strategies.list_strategies()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_protocol_strategy_has_params_and_a_description() -> None:
    assert set(STRATEGY_PARAMS) == set(STRATEGY_DESCRIPTIONS) == set(STRATEGY_NAMES)
    for name in STRATEGY_NAMES:
        schema = STRATEGY_PARAMS[name].model_json_schema()
        for field, spec in schema.get("properties", {}).items():
            assert spec.get("description"), f"{name}.{field} has no description"


@pytest.mark.parametrize(
    ("name", "raw", "field"),
    [
        ("hetlora", {"prune_gamma": 1.5}, "prune_gamma"),
        ("fslora", {"server_optimizer": "adam"}, "server_optimizer"),
        ("fslora", {"betas": [0.9, 1.0]}, "betas"),
        ("sdflora", {"dp_variant": "both"}, "dp_variant"),
        ("prelort", {"truncation_levels": "random"}, "truncation_levels"),
        ("fedavg", {"unknown": 1}, "unknown"),
    ],
)
def test_bad_params_fail_naming_the_field(name: str, raw: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        validate_params(name, raw)


def test_unknown_strategy_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="unknown strategy"):
        get_strategy("fedprox")


def test_cli_lists_strategies() -> None:
    runner = CliRunner()
    text = runner.invoke(app, ["strategies"])
    assert text.exit_code == 0
    for name in STRATEGY_NAMES:
        assert name in text.output
    as_json = runner.invoke(app, ["strategies", "--json"])
    assert as_json.exit_code == 0
    doc = json.loads(as_json.output)
    assert [row["name"] for row in doc] == list(STRATEGY_NAMES)
    assert all(row["description"] and "properties" in row["params_schema"] for row in doc)
    assert [row["name"] for row in doc if row["recommended"]] == [RECOMMENDED_STRATEGY]
    marked = [line for line in text.output.splitlines() if "(recommended" in line]
    assert len(marked) == 1
    assert marked[0].startswith(RECOMMENDED_STRATEGY)
