"""The CLIs start without torch: help, listings and argument errors answer in well under a
second instead of waiting for torch, transformers and peft to import (7-17 s on a cold disk)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "transformers", "peft", "opacus", "dp_accounting")

PROBE = textwrap.dedent("""
    import sys
    from typer.testing import CliRunner
    import fedlora.cli, fedlora_client.cli
    loaded = sorted(m for m in {heavy!r} if m in sys.modules)
    assert not loaded, f"importing the CLIs loads {{loaded}}"
    runner = CliRunner()
    for app, argv in [
        (fedlora.cli.app, ["--help"]),
        (fedlora.cli.app, ["strategies"]),
        (fedlora.cli.app, ["strategies", "--json"]),
        (fedlora.cli.app, ["demo", "--help"]),
        (fedlora_client.cli.app, ["--help"]),
        (fedlora_client.cli.app, ["enroll", "--help"]),
        (fedlora_client.cli.app, ["enroll", "--server", "http://x", "--token", "short"]),
    ]:
        result = runner.invoke(app, argv)
        loaded = sorted(m for m in {heavy!r} if m in sys.modules)
        assert not loaded, f"{{argv}} loads {{loaded}}"
        print(argv, result.exit_code)
""")


def test_cli_commands_that_do_not_train_never_import_torch() -> None:
    code = PROBE.format(heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "['strategies'] 0" in out.stdout
    assert "'--token', 'short'] 1" in out.stdout  # refused, exit 1, before loading anything


def test_demo_passes_its_data_size_to_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import fedlora.cli
    import fedlora.demo

    seen: list[fedlora.demo.DemoOptions] = []
    monkeypatch.setattr(fedlora.demo.Demo, "run", lambda self: seen.append(self.opts))
    runner = CliRunner()
    assert runner.invoke(fedlora.cli.app, ["demo", "--examples", "12000"]).exit_code == 0
    assert runner.invoke(fedlora.cli.app, ["demo"]).exit_code == 0
    assert [o.examples for o in seen] == [12000, fedlora.demo.DemoOptions.examples]
    refused = runner.invoke(fedlora.cli.app, ["demo", "--examples", "5"])
    assert refused.exit_code == 2
    assert len(seen) == 2
