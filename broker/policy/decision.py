"""Decisions: what the policy says about one hop of a delegation chain, and why.

The chain rule ("authority only narrows"): a hop by ``caller`` to ``target`` doing ``act``, in a
chain whose origin is ``origin``, is allowed iff

    allow(caller, target, act)
    and (origin == caller or allow(origin, target, act) or allow(caller, target, "delegate"))

where ``allow`` is the policy's own answer (some allow rule matches and no deny rule does), and an
explicit deny for the caller or the origin decides the hop whatever else holds. This module holds
that composition; where the single answers come from (casbin, a cache) is the engine's business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import msgspec

from broker.policy.rules import DELEGATE

# What audit records name as the policy version when no policy file is configured.
NO_POLICY_VERSION = "none"

Reason = Literal["allowed", "caller_denied", "origin_denied", "explicit_deny", "no_rule"]


class RuleRef(msgspec.Struct, frozen=True):
    """A rule as the operator wrote it: its 1-based line in the policy file and its text."""

    line: int
    text: str


class Verdict(msgspec.Struct, frozen=True):
    """The policy's answer for one (subject, object, action).

    ``rule`` is the first allow rule (file order) that matched when allowed, the first deny rule
    that matched when one did, and None when no rule matched at all.
    """

    allowed: bool
    rule: RuleRef | None = None
    # When allowed: the first ``approve`` rule (file order) that matched, if any. The call is
    # allowed only once a human approves it (deny beats approve, approve beats allow).
    approval: RuleRef | None = None

    @property
    def explicit_deny(self) -> bool:
        return not self.allowed and self.rule is not None


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """The answer for a hop (or a single permission), with the rule that decided it.

    ``reason`` is stable (it goes to the audit): ``allowed``; ``explicit_deny`` (a deny rule
    matched ``principal``); ``caller_denied`` (no rule allows the caller); ``origin_denied`` (no
    rule allows the chain's origin and the caller has no ``delegate`` rule); ``no_rule`` (a single
    permission such as ``originate`` that no rule grants). ``principal`` is whose evaluation
    decided. ``rule`` is the deny rule, or for an allowed hop the caller's allow rule;
    ``chain_rule`` is, for an allowed hop whose origin is not the caller, the origin's allow rule
    or (``delegated``) the caller's delegate rule. ``version`` names the policy that decided.
    ``approval`` is, for an allowed hop, the ``approve`` rule of the caller (or, failing that,
    of the origin) that makes it wait for a human's approval; ``approval_principal`` is whose.
    """

    allowed: bool
    reason: Reason
    principal: str
    rule: RuleRef | None = None
    chain_rule: RuleRef | None = None
    delegated: bool = False
    version: str = ""
    approval: RuleRef | None = None
    approval_principal: str = ""

    @property
    def needs_approval(self) -> bool:
        """Allowed, but only once a human approved this exact call."""
        return self.allowed and self.approval is not None


VerdictFn = Callable[[str, str, str], Verdict]


def operation_action(operation: str, skill: str = "") -> str:
    """The action string for an A2A operation on a skill ("" when the skill is unknown)."""
    return f"{operation}:{skill}"


def decide_hop(
    chain: Sequence[str], target: str, act: str, verdict: VerdictFn, version: str
) -> Decision:
    """Apply the chain rule to ``chain`` = [origin, ..., caller]; raises ValueError if empty."""
    if not chain:
        raise ValueError("a delegation chain names at least the caller")
    origin, caller = chain[0], chain[-1]
    mine = verdict(caller, target, act)
    theirs = mine if origin == caller else verdict(origin, target, act)
    refusal = _refusal(caller, mine, origin, theirs, version)
    if refusal is not None:
        return refusal
    approval = _approval(caller, mine, origin, theirs)
    if origin == caller:
        return _allow(caller, mine.rule, None, version, approval=approval)
    if theirs.allowed:
        return _allow(caller, mine.rule, theirs.rule, version, approval=approval)
    waiver = verdict(caller, target, DELEGATE)
    if waiver.allowed:
        return _allow(
            caller, mine.rule, waiver.rule, version, delegated=True,
            approval=_approval(caller, mine, caller, mine),
        )
    return _refuse("origin_denied", origin, None, version)


def _refusal(
    caller: str, mine: Verdict, origin: str, theirs: Verdict, version: str
) -> Decision | None:
    """An explicit deny (the caller's first) decides; then a caller that nothing allows."""
    if mine.explicit_deny:
        return _refuse("explicit_deny", caller, mine.rule, version)
    if theirs.explicit_deny:
        return _refuse("explicit_deny", origin, theirs.rule, version)
    if not mine.allowed:
        return _refuse("caller_denied", caller, None, version)
    return None


def _approval(
    caller: str, mine: Verdict, origin: str, theirs: Verdict
) -> tuple[str, RuleRef] | None:
    """The approve rule that holds the hop for a human: the caller's first, then the origin's
    (an origin whose own call would wait keeps waiting when it delegates)."""
    if mine.approval is not None:
        return caller, mine.approval
    if theirs.allowed and theirs.approval is not None:
        return origin, theirs.approval
    return None


def decide_single(principal: str, verdict: Verdict, version: str) -> Decision:
    """A permission that involves one principal only (originate, reenter)."""
    if verdict.allowed:
        return _allow(principal, verdict.rule, None, version)
    reason: Reason = "explicit_deny" if verdict.rule is not None else "no_rule"
    return _refuse(reason, principal, verdict.rule, version)


def _refuse(reason: Reason, principal: str, rule: RuleRef | None, version: str) -> Decision:
    return Decision(allowed=False, reason=reason, principal=principal, rule=rule, version=version)


def _allow(
    principal: str,
    rule: RuleRef | None,
    chain_rule: RuleRef | None,
    version: str,
    *,
    delegated: bool = False,
    approval: tuple[str, RuleRef] | None = None,
) -> Decision:
    return Decision(
        allowed=True,
        reason="allowed",
        principal=principal,
        rule=rule,
        chain_rule=chain_rule,
        delegated=delegated,
        version=version,
        approval=approval[1] if approval else None,
        approval_principal=approval[0] if approval else "",
    )
