"""The policy engine against a reference evaluator written from the rules' meaning.

For random role graphs, group graphs, policies and chains:
1. ``decide_chain`` gives exactly the reference's answer: verdict, reason, principal and lines.
2. Authority never grows along a chain: if chain [o, ..., c] may do ``act`` on ``t``, then c
   alone may, and so may o alone unless c holds a ``delegate`` rule for ``t``.
3. A corrupted file (a truncated line, an unknown role, a bad effect, an extra field, an unknown
   rule type) is refused at the corrupted line, and every answer stays what it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.policy import PolicyEngine, PolicyError

MODEL = (Path(__file__).resolve().parents[2] / "policies" / "model.conf").read_text()

AGENTS = ("a0", "a1", "a2")
TARGETS = ("t0", "t1")
ROLES = ("role:r0", "role:r1", "role:r2")
GROUPS = ("group:g0", "group:g1")
SPECIAL = ("originate", "delegate", "reenter")
# Weighted towards what requests ask, so that allowed hops and delegation are common enough.
RULE_ACTIONS = (
    *("*", "SendMessage:*", "SendMessage:*", "SendMessage:s0", "SendMessage:s1", "GetTask:*"),
    *("SendStreamingMessage:*", "delegate", "delegate", "reenter"),
)
REQUEST_ACTIONS = (
    *("SendMessage:s0", "SendMessage:s1", "SendMessage:", "GetTask:"),
    *("SendStreamingMessage:s0", "CancelTask:"),
)

# Rules that use a role or group nobody is in.
GHOSTS = (
    "p, role:ghost, t0, SendMessage:*, allow",
    "g, role:ghost, role:r0",
    "p, a0, group:ghost, *, deny",
)

PROPERTY_SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@dataclass(frozen=True)
class Policy:
    lines: tuple[str, ...]  # the file, comments included; line n is lines[n - 1]

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def rules(self, kind: str) -> list[tuple[int, list[str]]]:
        """(line number, fields after the type) of every rule of ``kind``."""
        found = []
        for number, line in enumerate(self.lines, start=1):
            fields = [f.strip() for f in line.split(",")]
            if fields[0] == kind:
                found.append((number, fields[1:]))
        return found


def _members(draw: st.DrawFn, labels: Sequence[str], leaves: Sequence[str], kind: str) -> list[str]:
    """Lines putting leaves (at least one each) and lower-numbered labels into each label."""
    lines = []
    for index, label in enumerate(labels):
        for leaf in draw(st.sets(st.sampled_from(leaves), min_size=1, max_size=2)):
            lines.append(f"{kind}, {leaf}, {label}")
        # Only labels after this one may nest in it, so the hierarchy has no cycle.
        for inner in draw(st.sets(st.sampled_from(labels[index + 1 :] or ("",)), max_size=2)):
            if inner:
                lines.append(f"{kind}, {inner}, {label}")
    return lines


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    lines = _members(draw, ROLES, AGENTS, "g") + _members(draw, GROUPS, TARGETS, "g2")
    for _ in range(draw(st.integers(min_value=1, max_value=14))):
        sub = draw(st.sampled_from(AGENTS + ROLES))
        act = draw(st.sampled_from((*RULE_ACTIONS, "originate")))
        obj = "*" if act == "originate" else draw(st.sampled_from((*TARGETS, *GROUPS, "*")))
        eft = draw(st.sampled_from(("allow", "allow", "allow", "deny")))
        lines.append(f"p, {sub}, {obj}, {act}, {eft}")
    lines = draw(st.permutations(lines))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        at = draw(st.integers(min_value=0, max_value=len(lines)))
        lines.insert(at, draw(st.sampled_from(("", "# a comment", "  # indented"))))
    return Policy(tuple(lines))


chains = st.lists(st.sampled_from(AGENTS), min_size=1, max_size=4)
requests = st.tuples(chains, st.sampled_from(TARGETS), st.sampled_from(REQUEST_ACTIONS))


# --- the reference ----------------------------------------------------------------------------


def ancestors(name: str, edges: list[tuple[int, list[str]]]) -> set[str]:
    """``name`` and everything it is (transitively) a member of."""
    found, pending = {name}, [name]
    while pending:
        current = pending.pop()
        for _, (child, parent) in edges:
            if child == current and parent not in found:
                found.add(parent)
                pending.append(parent)
    return found


def reference_verdict(policy: Policy, sub: str, obj: str, act: str) -> tuple[bool, int | None]:
    """(allowed, line): any matching deny refuses (first one named); else the first allow."""
    subjects = ancestors(sub, policy.rules("g"))
    objects = ancestors(obj, policy.rules("g2"))
    matching = [
        (number, eft)
        for number, (p_sub, p_obj, p_act, eft) in policy.rules("p")
        if p_sub in subjects
        and (p_obj == "*" or p_obj in objects)
        and (p_act == act or (act not in SPECIAL and fnmatchcase(act, p_act)))
    ]
    denies = [number for number, eft in matching if eft == "deny"]
    if denies:
        return False, denies[0]
    allows = [number for number, eft in matching if eft == "allow"]
    return (True, allows[0]) if allows else (False, None)


def reference_decision(policy: Policy, chain: Sequence[str], target: str, act: str) -> tuple:
    """(allowed, reason, principal, rule line, chain rule line, delegated), per docs/policy.md."""
    origin, caller = chain[0], chain[-1]
    mine_ok, mine_line = reference_verdict(policy, caller, target, act)
    theirs_ok, theirs_line = reference_verdict(policy, origin, target, act)
    if not mine_ok and mine_line is not None:
        return (False, "explicit_deny", caller, mine_line, None, False)
    if origin != caller and not theirs_ok and theirs_line is not None:
        return (False, "explicit_deny", origin, theirs_line, None, False)
    if not mine_ok:
        return (False, "caller_denied", caller, None, None, False)
    return reference_chain_part(policy, (origin, caller), target, act, mine_line)


def reference_chain_part(
    policy: Policy, ends: tuple[str, str], target: str, act: str, mine_line: int | None
) -> tuple:
    """The caller may: does the origin's authority (or a delegate rule) cover the hop?"""
    origin, caller = ends
    theirs_ok, theirs_line = reference_verdict(policy, origin, target, act)
    if origin == caller:
        return (True, "allowed", caller, mine_line, None, False)
    if theirs_ok:
        return (True, "allowed", caller, mine_line, theirs_line, False)
    waiver_ok, waiver_line = reference_verdict(policy, caller, target, "delegate")
    if waiver_ok:
        return (True, "allowed", caller, mine_line, waiver_line, True)
    return (False, "origin_denied", origin, None, None, False)


def engine_for(policy: Policy) -> PolicyEngine:
    engine = PolicyEngine(MODEL)
    engine.swap(engine.load_text(policy.text, "random.csv"))
    return engine


def as_tuple(engine: PolicyEngine, chain: Sequence[str], target: str, act: str) -> tuple:
    d = engine.decide_chain(chain, target, act)
    line = d.rule.line if d.rule else None
    chain_line = d.chain_rule.line if d.chain_rule else None
    return (d.allowed, d.reason, d.principal, line, chain_line, d.delegated)


# --- the properties ---------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(policies(), st.lists(requests, min_size=1, max_size=8))
def test_the_engine_agrees_with_the_reference(policy: Policy, asked: list) -> None:
    engine = engine_for(policy)
    for chain, target, act in asked:
        expected = reference_decision(policy, chain, target, act)
        assert as_tuple(engine, chain, target, act) == expected, (policy.text, chain, target, act)
    for agent in AGENTS:
        allowed, line = reference_verdict(policy, agent, "*", "originate")
        decision = engine.may_originate(agent)
        assert (decision.allowed, decision.rule.line if decision.rule else None) == (allowed, line)
        for target in TARGETS:
            assert (
                engine.may_reenter(agent, target).allowed
                == (reference_verdict(policy, agent, target, "reenter")[0])
            )


@PROPERTY_SETTINGS
@given(policies(), st.lists(requests, min_size=1, max_size=8))
def test_authority_never_grows_along_a_chain(policy: Policy, asked: list) -> None:
    engine = engine_for(policy)
    for chain, target, act in asked:
        if not engine.decide_chain(chain, target, act).allowed:
            continue
        origin, caller = chain[0], chain[-1]
        assert engine.decide_chain([caller], target, act).allowed
        assert (
            engine.decide_chain([origin], target, act).allowed
            or engine.verdict(caller, target, "delegate").allowed
        )
        # Whoever else stood in the chain, the same origin and caller get the same answer.
        assert engine.decide_chain([origin, "a9", caller], target, act).allowed


@st.composite
def corruptions(draw: st.DrawFn) -> tuple[Policy, Policy, int]:
    """A valid policy, a corrupted copy, and the line where the corruption is."""
    policy = draw(policies())
    lines = list(policy.lines)
    rule_lines = [i for i, line in enumerate(lines) if line and not line.lstrip().startswith("#")]
    at = draw(st.sampled_from(rule_lines))
    kind = draw(st.sampled_from(("truncate", "unknown_role", "bad_eft", "extra", "bad_type")))
    if kind == "truncate":  # a half-written save: the line stops before its last field
        lines[at] = lines[at].rsplit(",", 1)[0]
    elif kind == "unknown_role":
        lines.insert(at, draw(st.sampled_from(GHOSTS)))
    elif kind == "bad_eft":
        p_lines = [i for i in rule_lines if lines[i].startswith("p,")] or [at]
        at = draw(st.sampled_from(p_lines))
        effect = draw(st.sampled_from(("permit", "Allow", "deny!", "0")))
        lines[at] = lines[at].rsplit(",", 1)[0] + f", {effect}"
    elif kind == "extra":
        lines[at] += ", extra"
    else:
        lines[at] = "q" + lines[at]
    return policy, Policy(tuple(lines)), at + 1


@PROPERTY_SETTINGS
@given(corruptions(), st.lists(requests, min_size=1, max_size=6))
def test_a_broken_file_never_changes_a_decision(corrupted: tuple, asked: list) -> None:
    good, bad, bad_line = corrupted
    engine = engine_for(good)
    before = [as_tuple(engine, *request) for request in asked]
    try:
        engine.swap(engine.load_text(bad.text, "random.csv"))
    except PolicyError as error:
        assert error.line == bad_line, (bad.text, error)
    else:
        raise AssertionError(f"a corrupted file was accepted:\n{bad.text}")
    assert [as_tuple(engine, *request) for request in asked] == before
    # And the answers are the good policy's, not leftovers: a fresh engine agrees.
    fresh = engine_for(good)
    assert [as_tuple(fresh, *request) for request in asked] == before
