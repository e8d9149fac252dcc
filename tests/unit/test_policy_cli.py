"""`policy check` and `policy explain`: what an operator reads, and the exit codes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from broker.cli.policy_commands import check, explain

POLICIES = Path(__file__).resolve().parents[2] / "policies"
DEMO = str(POLICIES / "policy.csv")


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    shutil.copy(POLICIES / "model.conf", tmp_path / "model.conf")
    return tmp_path


def test_check_accepts_the_demo_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert check(DEMO) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: 26 rules, version ")
    assert len(out.split("version ")[1].strip()) == 64


def test_check_names_file_and_line(policy_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = policy_dir / "policy.csv"
    bad.write_text("# ok\ng, a, role:x\np, role:y, b, SendMessage:*, allow\n")
    assert check(str(bad)) == 1
    assert capsys.readouterr().err == (
        f"error: {bad}:3: unknown role:y: no g line puts anyone in it\n"
    )


def test_which_model_is_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "rules.csv"
    policy.write_text("p, a, b, GetTask:*, allow\n")
    assert check(str(policy)) == 0  # no model.conf beside it: the shipped one
    assert check(str(policy), model_path=str(POLICIES / "model.conf")) == 0
    (tmp_path / "model.conf").write_text("[request_definition]\nr = sub, obj\n")
    assert check(str(policy)) == 1  # the one beside it wins
    assert check(str(policy), model_path=str(tmp_path / "missing.conf")) == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'model.conf'}: [r] must define r_sub, r_obj, r_act" in err
    assert "missing.conf: cannot read" in err


def test_explain_an_allowed_chain(capsys: pytest.CaptureFixture[str]) -> None:
    code = explain(DEMO, ["demo-user", "planner"], "researcher", "SendMessage", "research-topic")
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert (
        out[1]
        == "  originate: allowed; caller demo-user: line 29: p, role:user, *, originate, allow"
    )
    assert out[2] == "hop 1: demo-user -> planner  SendMessage:research-topic  chain [demo-user]"
    assert out[3].startswith(
        "  hop: allowed; caller demo-user: line 31: p, role:user, group:planners"
    )
    assert out[4].startswith("hop 2: planner -> researcher")
    assert out[5].startswith("  hop: allowed; caller planner: line 49: p, role:planner")
    assert out[6].startswith("    and origin demo-user: line 40: p, role:user, group:workers")
    assert out[-1] == "result: allowed"


def test_explain_a_denied_chain(capsys: pytest.CaptureFixture[str]) -> None:
    code = explain(DEMO, ["demo-user", "planner", "researcher"], "planner", "SendMessage", "")
    out = capsys.readouterr().out
    assert code == 1
    assert "  re-enter planner: DENIED (no_rule); caller researcher: no rule allows it" in out
    assert (
        "  hop: DENIED (explicit_deny); caller researcher: line 60: "
        "p, researcher, group:planners, *, deny"
    ) in out
    assert out.endswith("result: DENIED\n")


def test_explain_an_origin_that_may_not_originate(capsys: pytest.CaptureFixture[str]) -> None:
    assert explain(DEMO, ["planner"], "writer", "GetTask", "") == 1
    assert "originate: DENIED (no_rule); caller planner" in capsys.readouterr().out


def test_explain_refuses_unknown_operations(capsys: pytest.CaptureFixture[str]) -> None:
    assert explain(DEMO, ["demo-user"], "planner", "Send", "") == 1
    assert "unknown A2A operation 'Send'" in capsys.readouterr().err


LLM_POLICY = (
    "g, app, role:user\n"
    "g, planner, role:planner\n"
    "p, role:user, *, originate, allow\n"
    "p, role:user, planner, SendMessage:*, allow\n"
    "p, role:planner, model:gpt-4o-mini, llm:chat, allow\n"
    "p, role:user, model:gpt-4o-mini, llm:chat, allow\n"
)


def test_explain_an_llm_call_down_a_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "llm.csv"
    policy.write_text(LLM_POLICY)

    code = explain(str(policy), ["app", "planner"], "model:gpt-4o-mini", "llm:chat", "")

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[1].startswith("  originate: allowed; caller app")
    assert out[2] == "hop 1: app -> planner  SendMessage:  chain [app]"
    assert out[4] == "hop 2: planner -> model:gpt-4o-mini  llm:chat  chain [app, planner]"
    assert out[5] == (
        "  call: allowed; caller planner: line 5: p, role:planner, model:gpt-4o-mini, llm:chat,"
        " allow"
    )
    assert out[-1] == "result: allowed"


def test_a_direct_llm_call_needs_no_originate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "llm.csv"
    policy.write_text(LLM_POLICY)

    assert explain(str(policy), ["planner"], "model:gpt-4o-mini", "llm:chat", "") == 0
    assert explain(str(policy), ["planner"], "model:other", "llm:chat", "") == 1

    out = capsys.readouterr().out
    assert "originate" not in out
    assert "call: DENIED (caller_denied); caller planner: no rule allows it" in out


@pytest.mark.parametrize(
    ("target", "operation", "problem"),
    [
        ("model:gpt-4o-mini", "SendMessage", "a model: give --operation llm:chat, llm:embeddings"),
        ("planner", "llm:chat", "llm:chat is an LLM call: its target is model:NAME"),
    ],
)
def test_explain_says_which_operation_fits_the_target(
    capsys: pytest.CaptureFixture[str], target: str, operation: str, problem: str
) -> None:
    assert explain(DEMO, ["demo-user"], target, operation, "") == 1
    assert problem in capsys.readouterr().err


def test_explain_reads_the_policy_of_the_brokers_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from broker.cli import main

    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "llm.csv").write_text(LLM_POLICY)
    config = tmp_path / "broker.toml"
    config.write_text('[policy]\npolicy_file = "rules/llm.csv"\n')
    monkeypatch.chdir(POLICIES.parent)  # a policies/policy.csv here must not be the one read

    assert main(["policy", "explain", "app", "planner", "--config", str(config)]) == 0
    monkeypatch.setenv("A2A_BROKER_CONFIG", str(config))
    assert main(["policy", "explain", "planner", "model:gpt-4o-mini"]) == 0
    assert main(["policy", "check"]) == 0

    out = capsys.readouterr().out
    assert out.count(f"policy {tmp_path / 'rules' / 'llm.csv'} (version") == 2
    assert "hop 1: planner -> model:gpt-4o-mini  llm:chat" in out
    assert "ok: 6 rules" in out


def test_explain_without_a_policy_file_in_the_config_says_everything_is_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from broker.cli import main

    monkeypatch.delenv("A2A_BROKER_CONFIG", raising=False)
    monkeypatch.chdir(POLICIES.parent)

    assert main(["policy", "explain", "a", "b"]) == 0

    assert "no [policy] policy_file in the default settings" in capsys.readouterr().out


def test_explain_shows_a_hop_that_waits_for_approval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.csv"
    policy.write_text(
        "g, u, role:user\ng2, w, group:workers\np, role:user, *, originate, allow\n"
        "p, role:user, group:workers, SendMessage:*, allow\n"
        "p, role:user, group:workers, SendMessage:wipe, approve\n"
    )
    assert explain(str(policy), ["u"], "w", "SendMessage", "wipe") == 0
    out = capsys.readouterr().out
    assert "APPROVAL REQUIRED: caller u: line 5: p, role:user, group:workers" in out
    assert out.rstrip().endswith("result: allowed after a human's approval (hop 1)")
    assert explain(str(policy), ["u"], "w", "SendMessage", "read") == 0
    assert capsys.readouterr().out.rstrip().endswith("result: allowed")
