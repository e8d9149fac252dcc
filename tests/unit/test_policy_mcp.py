"""Policy rules for MCP servers: objects ``mcp:<server>``, actions ``mcp:<method>[:<name>]``."""

from __future__ import annotations

import pytest

from broker.policy.engine import PolicyEngine
from broker.policy.rules import PolicyError, parse_policy
from broker.policy.runtime import DEFAULT_MODEL

RULES = """\
g, alice, role:dev
g2, mcp:github, group:code
p, role:dev, group:code, mcp:*, allow
p, role:dev, mcp:github, mcp:tools/call:delete_*, deny
p, bob, mcp:docs, mcp:tools/call:search, allow
"""


def _engine() -> PolicyEngine:
    engine = PolicyEngine(DEFAULT_MODEL.read_text())
    engine.swap(engine.load_text(RULES, "policy.csv"))
    return engine


@pytest.mark.parametrize(
    ("chain", "target", "act", "allowed"),
    [
        (("alice",), "mcp:github", "mcp:tools/call:create_issue", True),
        (("alice",), "mcp:github", "mcp:initialize", True),
        (("alice",), "mcp:github", "mcp:tools/call:delete_repo", False),
        (("bob",), "mcp:docs", "mcp:tools/call:search", True),
        (("bob",), "mcp:docs", "mcp:tools/call:index", False),
        (("bob",), "mcp:github", "mcp:tools/call:create_issue", False),
        (("alice", "bob"), "mcp:docs", "mcp:tools/call:search", False),  # alice may not
    ],
)
def test_mcp_calls_are_judged_per_server_and_tool_down_the_chain(
    chain: tuple[str, ...], target: str, act: str, allowed: bool
) -> None:
    assert _engine().decide_chain(chain, target, act).allowed is allowed


@pytest.mark.parametrize(
    "rule",
    [
        "p, alice, mcp:Git_Hub, mcp:*, allow",  # not a server name
        "p, alice, mcp:git__hub, mcp:*, allow",
        "p, alice, mcp:github, mcp:, allow",  # names no method
        "p, alice, mcp:github, mcp:*:x, allow",  # '*' only at the end
    ],
)
def test_malformed_mcp_rules_are_refused(rule: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(rule + "\n", "policy.csv")
