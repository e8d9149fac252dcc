"""The policy engine: worked examples of the chain rule, validation, and the decision cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.policy import Decision, PolicyEngine, PolicyError, RuleRef, check_model

POLICIES = Path(__file__).resolve().parents[2] / "policies"
MODEL = (POLICIES / "model.conf").read_text(encoding="utf-8")

# A small policy used by most examples; line numbers matter to the assertions below.
EXAMPLE = """\
# agents and roles
g, alice, role:lead
g, role:lead, role:staff
g, bob, role:staff
g, carol, role:staff
g2, svc-a, group:services
g2, group:services, group:backend
g2, svc-b, group:backend
p, role:staff, group:backend, SendMessage:*, allow
p, role:lead, svc-b, *, allow
p, bob, svc-b, SendMessage:secret, deny
p, alice, *, originate, allow
p, carol, svc-a, delegate, allow
p, role:staff, svc-a, reenter, allow
p, dave, svc-a, GetTask:*, allow
g, dave, role:none
p, role:none, svc-b, SendMessage:*, deny
"""


def engine_with(text: str) -> PolicyEngine:
    engine = PolicyEngine(MODEL)
    engine.swap(engine.load_text(text, "example.csv"))
    return engine


@pytest.fixture
def engine() -> PolicyEngine:
    return engine_with(EXAMPLE)


def rule(line: int) -> RuleRef:
    return RuleRef(line=line, text=EXAMPLE.splitlines()[line - 1])


# --- single hops ---------------------------------------------------------------------------


def test_an_allow_rule_allows_and_is_named(engine: PolicyEngine) -> None:
    decision = engine.decide_chain(["bob"], "svc-a", "SendMessage:summarise")
    assert decision.allowed
    assert (decision.reason, decision.principal, decision.rule) == ("allowed", "bob", rule(9))
    assert decision.version == engine.version


def test_explicit_deny_beats_allow(engine: PolicyEngine) -> None:
    # bob is staff, and staff may send to the backend (line 9), but line 11 denies this skill.
    decision = engine.decide_chain(["bob"], "svc-b", "SendMessage:secret")
    assert not decision.allowed
    assert (decision.reason, decision.principal, decision.rule) == (
        "explicit_deny",
        "bob",
        rule(11),
    )
    assert engine.decide_chain(["bob"], "svc-b", "SendMessage:other").allowed


def test_nested_roles_inherit(engine: PolicyEngine) -> None:
    # alice -> role:lead -> role:staff: she gets staff's rule (line 9) and lead's (line 10).
    assert engine.decide_chain(["alice"], "svc-a", "SendMessage:x").rule == rule(9)
    assert engine.decide_chain(["alice"], "svc-b", "GetTask:").rule == rule(10)
    # bob is staff but not lead.
    assert engine.decide_chain(["bob"], "svc-b", "GetTask:").reason == "caller_denied"


def test_groups_nest_and_name_targets(engine: PolicyEngine) -> None:
    # svc-a is in group:services, which is in group:backend; svc-c is in no group.
    assert engine.decide_chain(["carol"], "svc-a", "SendMessage:").allowed
    assert not engine.decide_chain(["carol"], "svc-c", "SendMessage:").allowed


def test_wildcard_actions(engine: PolicyEngine) -> None:
    # "SendMessage:*" covers every skill and the unknown skill, not other operations.
    assert engine.decide_chain(["bob"], "svc-a", "SendMessage:").allowed
    assert not engine.decide_chain(["bob"], "svc-a", "SendStreamingMessage:x").allowed
    # "*" covers every operation...
    assert engine.decide_chain(["alice"], "svc-b", "CancelTask:").allowed
    # ...but never grants the special actions, which must be named.
    assert not engine.may_reenter("alice", "svc-b").allowed
    assert not engine.decide_chain(["alice"], "svc-b", "delegate").allowed


def test_a_rule_may_name_a_single_agent(engine: PolicyEngine) -> None:
    assert engine.decide_chain(["dave"], "svc-a", "GetTask:").rule == rule(15)


def test_a_role_deny_reaches_its_members(engine: PolicyEngine) -> None:
    decision = engine.decide_chain(["dave"], "svc-b", "SendMessage:x")
    assert (decision.reason, decision.rule) == ("explicit_deny", rule(17))


def test_nothing_matching_is_refused() -> None:
    empty = PolicyEngine(MODEL)
    decision = empty.decide_chain(["anyone"], "anything", "SendMessage:")
    assert (decision.allowed, decision.reason, decision.rule) == (False, "caller_denied", None)


# --- chains ----------------------------------------------------------------------------------


def test_a_hop_needs_the_origin_allowed_too(engine: PolicyEngine) -> None:
    # alice may reach svc-b with anything (line 10); bob, whose chain it is, may not GetTask.
    decision = engine.decide_chain(["bob", "alice"], "svc-b", "GetTask:")
    assert not decision.allowed
    assert (decision.reason, decision.principal, decision.rule) == ("origin_denied", "bob", None)


def test_a_hop_within_both_authorities_is_allowed(engine: PolicyEngine) -> None:
    decision = engine.decide_chain(["alice", "x", "bob"], "svc-a", "SendMessage:")
    assert decision.allowed
    assert (decision.rule, decision.chain_rule, decision.delegated) == (rule(9), rule(9), False)


def test_only_origin_and_caller_count(engine: PolicyEngine) -> None:
    # "nobody" in the middle holds no rule: its own hop was decided when it made it.
    assert engine.decide_chain(["alice", "nobody", "bob"], "svc-a", "SendMessage:").allowed


def test_the_origins_explicit_deny_decides(engine: PolicyEngine) -> None:
    decision = engine.decide_chain(["bob", "alice"], "svc-b", "SendMessage:secret")
    assert (decision.reason, decision.principal, decision.rule) == (
        "explicit_deny",
        "bob",
        rule(11),
    )


def test_delegate_waives_the_origin_check() -> None:
    text = EXAMPLE + "p, carol, svc-b, SendMessage:*, allow\n"
    engine = engine_with(text)
    # dave's chain: dave may not send to svc-a, but carol holds delegate for svc-a (line 13).
    decision = engine.decide_chain(["dave", "carol"], "svc-a", "SendMessage:")
    assert decision.allowed
    assert (decision.rule, decision.chain_rule, decision.delegated) == (rule(9), rule(13), True)
    # delegate for svc-a says nothing about svc-b, and a deny of the origin still decides.
    assert engine.decide_chain(["x", "carol"], "svc-b", "SendMessage:").reason == "origin_denied"
    assert engine.decide_chain(["dave", "carol"], "svc-b", "SendMessage:").rule == rule(17)


def test_an_empty_chain_is_a_programming_error(engine: PolicyEngine) -> None:
    with pytest.raises(ValueError, match="chain"):
        engine.decide_chain([], "svc-a", "SendMessage:")


# --- originate, reenter ---------------------------------------------------------------------


def test_originate(engine: PolicyEngine) -> None:
    assert engine.may_originate("alice") == Decision(
        allowed=True, reason="allowed", principal="alice", rule=rule(12), version=engine.version
    )
    refused = engine.may_originate("bob")
    assert (refused.allowed, refused.reason, refused.rule) == (False, "no_rule", None)


def test_originate_can_be_denied_explicitly() -> None:
    engine = engine_with(EXAMPLE + "p, role:lead, *, originate, deny\n")
    assert engine.may_originate("alice").reason == "explicit_deny"
    assert engine.may_originate("alice").rule == RuleRef(18, "p, role:lead, *, originate, deny")


def test_reenter(engine: PolicyEngine) -> None:
    assert engine.may_reenter("bob", "svc-a").rule == rule(14)
    assert not engine.may_reenter("bob", "svc-b").allowed


def test_the_demo_policy() -> None:
    engine = PolicyEngine.from_files(POLICIES / "model.conf", POLICIES / "policy.csv")
    assert engine.may_originate("demo-user").allowed
    assert not engine.may_originate("planner").allowed
    user, planner, researcher = "demo-user", "planner", "researcher"
    assert engine.decide_chain([user], planner, "SendMessage:plan-article").allowed
    assert engine.decide_chain([user, planner], researcher, "SendMessage:research-topic").allowed
    assert engine.decide_chain([user, planner], "writer", "SendStreamingMessage:").allowed
    denied = engine.decide_chain([user, planner, researcher], planner, "SendMessage:")
    assert (denied.reason, denied.rule and denied.rule.text) == (
        "explicit_deny",
        "p, researcher, group:planners, *, deny",
    )
    assert engine.decide_chain([user, planner, "writer"], researcher, "SendMessage:").reason == (
        "caller_denied"
    )


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('p, alice, "svc-a, SendMessage:*, allow', "not valid CSV"),
        ("x, alice, svc-a", "unknown rule type 'x'"),
        ("p, alice, svc-a, SendMessage:*", "p takes 4 fields after the type, not 3"),
        ("p, alice, svc-a, SendMessage:*, allow, extra", "not 5"),
        ("g, alice", "g takes 2 fields"),
        ("p, alice, svc-a, SendMessage:*, permit", "effect 'permit' must be allow or deny"),
        ("p, role:ghost, svc-a, SendMessage:*, allow", "unknown role:ghost"),
        ("g, role:ghost, role:staff", "unknown role:ghost"),
        ("p, alice, group:ghost, SendMessage:*, allow", "unknown group:ghost"),
        ("g2, group:ghost, group:backend", "unknown group:ghost"),
        ("p, alice, role:staff, SendMessage:*, allow", "object 'role:staff'"),
        ("p, group:backend, svc-a, SendMessage:*, allow", "subject 'group:backend'"),
        ("g, alice, group:backend", "g parent 'group:backend' must be role:"),
        ("g2, svc-a, role:staff", "g2 parent 'role:staff' must be group:"),
        ("p, alice, svc-a, *:summarise, allow", "'*' may only end an action"),
        ("p, alice, svc-a, SendMessage:*x, allow", "'*' may only end an action"),
        ("p, alice, svc-a, SendMesage:*, allow", "unknown A2A operation 'SendMesage'"),
        ("p, alice, svc-a, SendMessage, allow", "write SendMessage:*"),
        ("p, alice, svc-a, originate, allow", "originate rule's object must be *"),
        ("p, Alice, svc-a, SendMessage:*, allow", "subject 'Alice'"),
        ("p, alice, , SendMessage:*, allow", "empty field"),
        ("g, role:staff, role:lead", "membership cycle through role:lead"),
        ("g, role:lead, role:lead", "cannot contain itself"),
    ],
)
def test_invalid_lines_are_refused_with_file_and_line(line: str, message: str) -> None:
    engine = PolicyEngine(MODEL)
    text = EXAMPLE + "\n# the bad line follows a blank line and a comment\n" + line + "\n"
    with pytest.raises(PolicyError) as caught:
        engine.load_text(text, "policies/bad.csv")
    error = caught.value
    assert message in error.message
    expected_line = len(EXAMPLE.splitlines()) + 3  # comments and blank lines count
    assert (error.file, error.line) == ("policies/bad.csv", expected_line)
    assert str(error).startswith(f"policies/bad.csv:{expected_line}: ")


def test_an_unknown_role_is_reported_where_it_is_used() -> None:
    text = "p, role:ghost, svc-a, SendMessage:*, allow\ng, alice, role:staff\n"
    with pytest.raises(PolicyError) as caught:
        PolicyEngine(MODEL).load_text(text, "f.csv")
    assert (caught.value.line, caught.value.message) == (
        1,
        "unknown role:ghost: no g line puts anyone in it",
    )


def test_nesting_deeper_than_casbin_follows_is_refused() -> None:
    chain = ["g, agent, role:r0"] + [f"g, role:r{i}, role:r{i + 1}" for i in range(12)]
    with pytest.raises(PolicyError, match="nested deeper than 9 links"):
        PolicyEngine(MODEL).load_text("\n".join(chain), "deep.csv")
    # Nine links are fine, and casbin really follows all of them.
    ok = [*chain[:9], "p, role:r8, svc, SendMessage:*, allow"]
    assert engine_with("\n".join(ok)).decide_chain(["agent"], "svc", "SendMessage:").allowed


def test_comments_blank_lines_and_spacing_are_accepted() -> None:
    text = "\n# comment\n   # indented\n\ng,alice,role:x\n  p ,role:x , svc, GetTask:* ,allow\n"
    engine = engine_with(text)
    assert engine.decide_chain(["alice"], "svc", "GetTask:").rule == RuleRef(
        6, "p ,role:x , svc, GetTask:* ,allow"
    )
    assert engine.snapshot.rule_count == 2


def test_a_duplicate_rule_is_reported_at_its_first_line() -> None:
    line = "p, alice, svc, GetTask:*, allow"
    engine = engine_with(f"{line}\n{line}\n")
    assert engine.decide_chain(["alice"], "svc", "GetTask:").rule == RuleRef(1, line)


def test_an_unusable_model_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"\[p\] must define"):
        check_model(MODEL.replace("p = sub, obj, act, eft", "p = sub, obj, act"), "m.conf")
    with pytest.raises(PolicyError, match="roles g and g2"):
        check_model(MODEL.replace("g2 = _, _", ""), "m.conf")


# --- versions and the cache -----------------------------------------------------------------


def test_a_failed_load_changes_nothing(engine: PolicyEngine) -> None:
    before = engine.snapshot
    answer = engine.decide_chain(["bob"], "svc-a", "SendMessage:")
    with pytest.raises(PolicyError):
        engine.load_text(EXAMPLE + "p, bob, svc-a, SendMessage:*, maybe\n", "broken.csv")
    assert engine.snapshot is before
    assert engine.decide_chain(["bob"], "svc-a", "SendMessage:") == answer


def test_answers_are_cached_per_version_and_dropped_on_swap(engine: PolicyEngine) -> None:
    first = engine.verdict("bob", "svc-a", "SendMessage:")
    assert engine.cached_answers == 1
    assert engine.verdict("bob", "svc-a", "SendMessage:") is first  # served from the cache
    hop = engine.decide_chain(["bob"], "svc-a", "SendMessage:")
    assert hop.allowed
    assert engine.cached_answers == 1
    assert engine.decide_chain(["bob", "x", "bob"], "svc-a", "SendMessage:") is hop

    denying = engine.load_text(EXAMPLE + "p, bob, svc-a, *, deny\n", "v2.csv")
    assert denying.version != engine.version
    engine.swap(denying)
    assert engine.cached_answers == 0
    assert engine.version == denying.version
    assert engine.decide_chain(["bob"], "svc-a", "SendMessage:").reason == "explicit_deny"


def test_a_swap_can_bring_answers_computed_under_the_new_policy(engine: PolicyEngine) -> None:
    engine.verdict("bob", "svc-a", "SendMessage:")
    engine.decide_chain(["alice"], "svc-b", "GetTask:")
    questions = engine.hot_questions(10)
    assert questions == [("bob", "svc-a", "SendMessage:"), ("alice", "svc-b", "GetTask:")]
    new = engine.load_text(EXAMPLE + "p, bob, svc-a, *, deny\n", "v2.csv")
    engine.swap(new, new.answer(questions, budget_s=10))
    assert engine.cached_answers == 2
    assert engine.verdict("bob", "svc-a", "SendMessage:").rule == RuleRef(
        18, "p, bob, svc-a, *, deny"
    )
    assert engine.cached_answers == 2  # answered from the warmed cache
    assert new.answer(questions, budget_s=0) == {}


def test_the_cache_is_bounded() -> None:
    engine = PolicyEngine(MODEL, cache_size=3)
    engine.swap(engine.load_text(EXAMPLE, "example.csv"))
    for target in ("a", "b", "c", "d", "e"):
        engine.verdict("bob", target, "SendMessage:")
    assert engine.cached_answers == 3


def test_the_version_is_the_sha256_of_the_text(engine: PolicyEngine) -> None:
    import hashlib

    assert engine.version == hashlib.sha256(EXAMPLE.encode()).hexdigest()
    assert engine.load_text(EXAMPLE, "elsewhere.csv").version == engine.version


def test_the_shipped_model_is_the_documented_one() -> None:
    from pathlib import Path

    root = Path(__file__).parents[2]
    shipped = root / "broker" / "policy" / "model.conf"
    assert shipped.read_text() == (root / "policies" / "model.conf").read_text()


def test_model_rules_for_llm_calls() -> None:
    from broker.policy.rules import parse_policy

    text = (
        "g, bob, role:user\n"
        "g2, model:gpt-4o-mini, group:cheap\n"
        "p, role:user, group:cheap, llm:chat, allow\n"
        "p, bob, model:o1/large, llm:*, deny\n"
    )
    parsed = parse_policy(text, "t.csv")
    assert len(parsed.of_kind("p")) == 2
