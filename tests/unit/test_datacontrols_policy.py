"""The [datacontrols] settings and the data policy: rule order, specificity, matching by
direction, caller, agent, model and skill; flow rules; settings errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.datacontrols import DataControlsSettings, DataPolicy, DataRule, FlowRule, Subject
from broker.settings import SettingsError, load_settings
from broker.settings_datacontrols import Action


def policy(
    *rules: DataRule, flows: tuple[FlowRule, ...] = (), default: Action = "tag"
) -> DataPolicy:
    return DataPolicy(DataControlsSettings(rules=rules, flows=flows, default_action=default))


A2A = Subject("request", "alice", agent="billing", skill="invoice")
LLM = Subject("request", "alice", model="openai/gpt-4o")


def test_a_type_no_rule_names_gets_the_default_action() -> None:
    assert policy().action(A2A, "pii:email") == "tag"
    assert policy(default="allow").action(A2A, "pii:email") == "allow"


def test_within_a_rule_the_most_specific_pattern_wins() -> None:
    rules = policy(DataRule(actions={"*": "block", "pii:*": "redact", "pii:email": "allow"}))

    assert rules.action(A2A, "pii:email") == "allow"
    assert rules.action(A2A, "pii:card") == "redact"
    assert rules.action(A2A, "secret:jwt") == "block"


def test_the_first_rule_that_matches_and_names_the_type_decides() -> None:
    rules = policy(
        DataRule(callers=["bob"], actions={"*": "block"}),  # does not match alice
        DataRule(actions={"pii:card": "redact"}),  # matches, names only cards
        DataRule(actions={"pii:*": "pseudonymize"}),
    )

    assert rules.action(A2A, "pii:card") == "redact"
    assert rules.action(A2A, "pii:email") == "pseudonymize"
    assert rules.action(Subject("request", "bob", agent="billing"), "pii:email") == "block"


def test_rules_match_direction_callers_skills_and_shell_patterns() -> None:
    rules = policy(
        DataRule(direction="response", callers=["ali*"], skills=["inv*"], actions={"*": "block"})
    )
    answer = Subject("response", "alice", agent="billing", skill="invoice")

    assert rules.action(answer, "pii:email") == "block"
    assert rules.action(A2A, "pii:email") == "tag"  # the request direction
    assert rules.action(Subject("response", "alice", agent="billing", skill="x"), "pii:ip") == "tag"


def test_a_rule_naming_models_applies_to_llm_calls_and_one_naming_agents_to_a2a() -> None:
    rules = policy(
        DataRule(models=["openai/*"], actions={"pii:*": "pseudonymize"}),
        DataRule(agents=["bill*"], actions={"pii:*": "redact"}),
    )

    assert rules.action(LLM, "pii:card") == "pseudonymize"
    assert rules.action(A2A, "pii:card") == "redact"
    assert rules.action(Subject("request", "alice", model="local/llama"), "pii:card") == "tag"
    assert rules.action(Subject("request", "alice", agent="search"), "pii:card") == "tag"


def test_flow_rules_name_the_carried_tag_that_may_not_reach_the_target() -> None:
    rules = policy(
        flows=(
            FlowRule(tags=("secret:*",), models=("openai/*",)),
            FlowRule(tags=("pii:card",), agents=("partner-*",)),
        )
    )

    denied = rules.forbidden_flow(["pii:email", "secret:jwt"], model="openai/gpt-4o")
    assert denied is not None
    assert (denied.tag, denied.rule) == ("secret:jwt", 0)
    assert rules.forbidden_flow(["pii:card"], agent="partner-acme") is not None
    assert rules.forbidden_flow(["pii:card"], agent="billing") is None
    assert rules.forbidden_flow(["pii:email"], agent="partner-acme") is None
    assert rules.forbidden_flow([], model="openai/gpt-4o") is None


def write(tmp_path: Path, text: str) -> str:
    config = tmp_path / "broker.toml"
    config.write_text(text)
    return str(config)


def test_the_section_loads_from_toml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[datacontrols]
enabled = true
phone_regions = ["DE"]
national_ids = ["us.ssn", "de.idnr"]
[[datacontrols.rules]]
models = ["openai/*"]
actions = { "secret:*" = "block", "pii:card" = "pseudonymize" }
[[datacontrols.flows]]
tags = ["secret:*"]
agents = ["partner-*"]
""",
    )

    settings = load_settings(path, environ={}).datacontrols

    assert settings.enabled
    assert settings.rules[0].actions == {"secret:*": "block", "pii:card": "pseudonymize"}
    assert settings.flows[0].agents == ("partner-*",)
    assert load_settings(None, environ={}).datacontrols.enabled is False


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('[[datacontrols.rules]]\nactions = { "email" = "block" }', "is not a type"),
        ('[[datacontrols.rules]]\nactions = { "pii:email" = "shred" }', "shred"),
        ('[[datacontrols.flows]]\ntags = ["pii:*"]', "names `agents` or `models`"),
        ('[datacontrols]\nnational_ids = ["xx.nope"]', "unknown national id"),
        ('[datacontrols]\nphone_regions = ["us"]', "unknown phone region"),
        ('[datacontrols]\nengine = "spacy"', "engine"),
    ],
)
def test_settings_errors_say_what_is_wrong(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(SettingsError, match=said):
        load_settings(write(tmp_path, text), environ={})
