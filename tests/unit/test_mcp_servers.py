"""Registered MCP servers: settings, names, egress, and what is sent upstream."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.errors import EgressDeniedError
from broker.mcp.errors import McpServerExistsError, McpServerInvalidError, McpServerNotFoundError
from broker.mcp.servers import (
    McpServer,
    McpServerRegistry,
    registry_from_settings,
    upstream_headers,
)
from broker.mcp.sessions import UpstreamSession
from broker.outbound.egress import EgressPolicy
from broker.settings import EgressSettings, SettingsError, load_settings

CONFIG = """
[mcp.servers.github]
url = "http://127.0.0.1:9/mcp"
credential = { kind = "bearer", env = "GH_MCP" }
[mcp.servers.docs]
url = "http://127.0.0.1:9/docs/mcp"
aggregate = false
credential = { kind = "header", header = "X-Docs-Key", value = "k1" }
"""


def loopback() -> EgressPolicy:
    return EgressPolicy(EgressSettings(allow_loopback=True))


def test_servers_come_from_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(CONFIG)
    settings = load_settings(str(path), environ={})
    registry = registry_from_settings(settings.mcp, {"GH_MCP": "s3cret"}, loopback().check_url)
    github = registry.get("github")
    assert github.auth_headers == {"authorization": "Bearer s3cret"}
    assert "s3cret" not in repr(github)
    assert registry.get("docs").auth_headers == {"x-docs-key": "k1"}
    assert [s.name for s in registry.aggregated()] == ["github"]


def test_a_missing_secret_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(CONFIG)
    settings = load_settings(str(path), environ={})
    with pytest.raises(McpServerInvalidError, match=r"\$GH_MCP is not set"):
        registry_from_settings(settings.mcp, {}, loopback().check_url)


def test_an_unknown_key_in_the_section_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text('[mcp.servers.x]\nurl = "http://a/mcp"\nurll = "typo"\n')
    with pytest.raises(SettingsError, match="urll"):
        load_settings(str(path), environ={})


def test_egress_rules_apply_at_registration() -> None:
    registry = McpServerRegistry(EgressPolicy(EgressSettings()).check_url)
    for url in ("http://127.0.0.1:8000/mcp", "http://169.254.169.254/latest", "file:///etc"):
        with pytest.raises(EgressDeniedError):
            registry.register(McpServer("s", url))
    with pytest.raises(McpServerNotFoundError):
        registry.get("s")


@pytest.mark.parametrize("name", ["", "GitHub", "git__hub", "git_", "a b", "-x", "x" * 64, "é"])
def test_names_that_could_not_be_prefixed_cleanly_are_refused(name: str) -> None:
    with pytest.raises(McpServerInvalidError):
        McpServerRegistry(loopback().check_url).register(McpServer(name, "http://127.0.0.1/m"))


def test_a_name_is_registered_once() -> None:
    registry = McpServerRegistry(loopback().check_url)
    registry.register(McpServer("a", "http://127.0.0.1:1/mcp"))
    with pytest.raises(McpServerExistsError):
        registry.register(McpServer("a", "http://127.0.0.1:2/mcp"))
    registry.register(McpServer("a", "http://127.0.0.1:2/mcp"), replace=True)
    assert registry.get("a").url.endswith(":2/mcp")
    registry.remove("a")
    with pytest.raises(McpServerNotFoundError):
        registry.remove("a")


def test_the_callers_credential_never_goes_upstream() -> None:
    server = McpServer("github", "http://127.0.0.1:1/mcp",
                       auth_headers={"authorization": "Bearer broker-held"})
    inbound = [("Authorization", "Bearer caller-secret"), ("Cookie", "c=1"),
               ("Mcp-Session-Id", "sealed-for-caller"), ("Mcp-Method", "tools/call"),
               ("Mcp-Name", "create_issue"), ("Mcp-Param-Repo", "a/b"), ("X-Forwarded-For", "1")]
    headers = upstream_headers(server, inbound, protocol_version="2025-11-25",
                               session=UpstreamSession("upstream-1", "2025-11-25"),
                               hop_token="hop.jwt")
    assert headers == {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2025-11-25",
        "mcp-method": "tools/call",
        "mcp-name": "create_issue",
        "mcp-param-repo": "a/b",
        "mcp-session-id": "upstream-1",
        "a2a-delegation": "hop.jwt",
        "authorization": "Bearer broker-held",
    }
