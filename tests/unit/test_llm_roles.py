from __future__ import annotations

from broker.policy.engine import PolicyEngine
from broker.policy.roles import AgentRoles
from broker.policy_runtime import DEFAULT_MODEL

POLICY = """
g, bob, role:team-b
g, role:team-b, role:org
p, role:org, *, *, allow
"""


def test_roles_are_read_transitively_and_follow_reloads() -> None:
    engine = PolicyEngine(DEFAULT_MODEL.read_text())
    engine.swap(engine.load_text(POLICY, "p.csv"))
    roles = AgentRoles(engine)
    assert roles.of("bob") == ("role:team-b", "role:org")
    assert roles.of("alice") == ()
    engine.swap(engine.load_text("g, alice, role:org\np, role:org, *, *, allow\n", "p.csv"))
    assert roles.of("alice") == ("role:org",) and roles.of("bob") == ()


def test_no_policy_no_roles() -> None:
    assert AgentRoles(None).of("bob") == ()
