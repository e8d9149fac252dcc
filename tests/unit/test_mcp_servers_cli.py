"""``a2a-broker mcp-servers``: the tables an operator sees on a terminal, and the secret that
never goes on the command line."""

from __future__ import annotations

import io
import json
import re

import pytest

from broker.cli import build_parser
from broker.cli.mcp_servers import server_table, servers_table
from broker.cli.output import Output

SERVER = {
    "name": "github", "source": "api", "url": "https://mcp.example.com/mcp",
    "description": "issues", "aggregate": True, "timeout_s": 120.0, "idle_timeout_s": 60.0,
    "credential": {"kind": "header", "header": "x-api-key", "fingerprint": "sha256:0a1b2c3d"},
    "created_at": 1795633412.0, "updated_at": 1795633412.0,
}


ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_servers_are_a_table_on_a_terminal_and_json_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    terminal, pipe = _Terminal(), io.StringIO()
    Output(out=terminal).data({"servers": [SERVER]}, servers_table)
    Output(out=pipe).data({"servers": [SERVER]}, servers_table)
    shown = ANSI.sub("", terminal.getvalue())
    for column in ("name", "source", "url", "aggregate", "credential", "updated_at"):
        assert column in shown
    assert "header x-api-key sha256:0a1b2c3d" in shown
    assert "2026-11-25T19:03:32.000Z" in shown and "{" not in shown
    assert json.loads(pipe.getvalue())["servers"][0]["name"] == "github"
    one = _Terminal()
    Output(out=one).data({"server": SERVER}, server_table)
    assert "MCP server github" in ANSI.sub("", one.getvalue()) and "issues" in one.getvalue()


def test_a_secret_has_no_command_line_option() -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["mcp-servers", "register", "s", "https://h/mcp", "--secret", "x"])
    args = parser.parse_args(["mcp-servers", "rotate", "s", "--credential", "bearer",
                              "--secret-env", "MY_TOKEN"])
    assert args.secret_env == "MY_TOKEN"
