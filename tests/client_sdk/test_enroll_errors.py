"""A bad join token is a one-line error that never repeats the token."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedlora_client import ConfigError, FedloraClient
from fedlora_client.cli import app

SHORT_TOKEN = "tok-9f3a7c"  # 10 characters; join tokens are 16 to 256


def test_cli_refuses_a_short_token_in_one_line_without_echoing_it() -> None:
    result = CliRunner().invoke(
        app, ["enroll", "--server", "http://127.0.0.1:9", "--token", SHORT_TOKEN]
    )
    assert result.exit_code == 1
    assert "ConfigError: cannot enroll: join_token: String should have at least 16" in result.output
    assert "copy the whole one-time join token" in result.output
    assert "Traceback" not in result.output
    assert SHORT_TOKEN not in result.output


def test_sdk_enroll_raises_config_error_without_the_token_or_a_request() -> None:
    with pytest.raises(ConfigError) as info:
        FedloraClient.enroll("http://127.0.0.1:9", SHORT_TOKEN, name="")  # nothing listens on :9
    message = str(info.value)
    assert "join_token" in message
    assert "name: String should have at least 1 character" in message
    assert SHORT_TOKEN not in message
    assert info.value.__cause__ is None  # the pydantic error (which holds the input) is dropped
    assert info.value.__suppress_context__
