"""Chain policy: Casbin rules over agents, roles and groups, decided for each hop of a chain.

- ``rules``: the policy file's syntax and validation (``PolicyError`` names file and line).
- ``decision``: the chain rule ("authority only narrows") and the ``Decision`` it yields.
- ``engine``: ``PolicyEngine``, the one place casbin is used; answers cached per policy version.
- ``reload``: ``PolicyReloader``, file polling and Redis pub/sub between replicas.
- ``cli``: what ``a2a-broker policy check`` / ``policy explain`` do.
"""

from broker.policy.decision import Decision, Reason, RuleRef, Verdict, operation_action
from broker.policy.engine import PolicyEngine, PolicySnapshot, check_model, policy_version
from broker.policy.reload import PolicyMessage, PolicyReloader
from broker.policy.rules import (
    DELEGATE,
    ORIGINATE,
    REENTER,
    ParsedPolicy,
    PolicyError,
    Rule,
    parse_policy,
)

__all__ = [
    "DELEGATE",
    "ORIGINATE",
    "REENTER",
    "Decision",
    "ParsedPolicy",
    "PolicyEngine",
    "PolicyError",
    "PolicyMessage",
    "PolicyReloader",
    "PolicySnapshot",
    "Reason",
    "Rule",
    "RuleRef",
    "Verdict",
    "check_model",
    "operation_action",
    "parse_policy",
    "policy_version",
]
