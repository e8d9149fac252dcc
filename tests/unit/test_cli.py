"""The ``a2a-broker`` command line as a newcomer meets it: help, versions, argument errors,
one-line failures with the variables to set, and answers in tables or JSON."""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from google.protobuf.json_format import MessageToDict

import broker
from broker.cli import build_parser, main
from broker.cli.output import Output, Table, iso_time, with_iso_times
from broker.settings import CONFIG_ENV
from testkit.config import BrokerConfig
from testkit.procs import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
EPOCH = 1795633412.327
EPOCH_ISO = "2026-11-25T19:03:32.327Z"


def _parsers(parser: argparse.ArgumentParser, path: str = "a2a-broker") -> Iterator[
    tuple[str, argparse.ArgumentParser]
]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def test_every_option_and_argument_has_help_and_no_markup() -> None:
    missing, markup = [], []
    for path, parser in _parsers(build_parser()):
        texts = [parser.description or "", parser.epilog or ""]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
            texts.append(action.help or "")
        markup += [f"{path}: {text}" for text in texts if "``" in text or ":class:" in text]

    assert missing == []
    assert markup == []


def test_top_level_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    with pytest.raises(SystemExit):
        main(["--help"])

    out = capsys.readouterr().out
    assert version.value.code == 0
    assert out.startswith(f"a2a-broker {broker.__version__}\n")
    assert "A2A_BROKER_URL" in out and "A2A_BROKER_ADMIN_TOKEN" in out
    assert "``" not in out


def _usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as raised:
        main(list(argv))
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("command", ["search", "tail", "export"])
def test_audit_times_that_are_not_times_are_argument_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    err = _usage_error(capsys, "audit", command, str(tmp_path), "--since", "yesterday")

    assert "argument --since: not a time: 'yesterday'" in err
    assert "ISO 8601" in err and "30s, 15m, 1h, 2d, 1w" in err


def test_audit_times_take_iso_epoch_and_relative_forms() -> None:
    parser = build_parser()
    for given in ("2026-12-01", "2026-12-01T09:30:00Z", "1795633412", "1h", "30m", "2d"):
        args = parser.parse_args(["audit", "search", "x", "--since", given])
        assert args.since > 0, given
    hour = parser.parse_args(["audit", "search", "x", "--since", "1h"]).since
    day = parser.parse_args(["audit", "search", "x", "--since", "1d"]).since
    assert 22 * 3600 * 10**6 < hour - day < 24 * 3600 * 10**6  # 1h ago is 23h after 1d ago


def test_audit_decision_takes_synonyms_and_names_the_valid_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    assert parser.parse_args(["audit", "search", "x", "--decision", "denied"]).decision == "deny"
    assert parser.parse_args(["audit", "tail", "x", "--decision", "Allowed"]).decision == "allow"

    err = _usage_error(capsys, "audit", "search", "x", "--decision", "blocked")

    assert "invalid choice: 'blocked' (choose from 'allow', 'deny')" in err


@pytest.mark.parametrize(
    ("limit", "named"),
    [
        ("calls/week=5", "unknown window 'week' in 'calls/week=5' (valid: minute, hour, day, "
                         "month, lifetime)"),
        ("dollars/day=5", "unknown metric 'dollars'"),
        ("calls=5", "expected METRIC/WINDOW=N"),
    ],
)
def test_budget_limits_name_the_valid_windows_and_metrics(
    capsys: pytest.CaptureFixture[str], limit: str, named: str
) -> None:
    err = _usage_error(capsys, "budgets", "set", "agent:x", "--limit", limit)

    assert named in err


def test_a_card_file_that_cannot_be_read_is_an_argument_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    err = _usage_error(capsys, "agents", "register", "x", "--card", str(tmp_path / "no.json"))

    assert "argument --card: cannot read" in err


def test_admin_commands_without_a_token_name_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("A2A_BROKER_ADMIN_TOKEN", raising=False)

    assert main(["agents", "--url", "http://127.0.0.1:9", "list"]) == 2

    assert capsys.readouterr().err == (
        "a2a-broker: no admin token: set $A2A_BROKER_ADMIN_TOKEN or pass --admin-token\n"
    )


@pytest.mark.parametrize("position", ["before", "after"])
def test_an_unreachable_broker_is_one_line_that_names_the_variable(
    capsys: pytest.CaptureFixture[str], position: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    options = ["--url", url, "--admin-token=t", "--json"]
    argv = ["trees", *options, "show", "t1"] if position == "before" else [
        "trees", "show", "t1", *options]

    assert main(argv) == 1

    err = capsys.readouterr().err
    assert err.startswith(f"a2a-broker: cannot reach the broker at {url} (")
    assert "Set $A2A_BROKER_URL or pass --url" in err and err.count("\n") == 1


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_answers_are_tables_on_a_terminal_and_json_otherwise() -> None:
    answer = {"agents": [{"name": "planner", "created_at": EPOCH}]}

    def tables(body: dict[str, list[dict[str, object]]]) -> list[Table]:
        rows = [(a["name"], a["created_at"]) for a in body["agents"]]
        return [Table(("name", "created_at"), rows)]

    terminal, pipe, forced = _Terminal(), io.StringIO(), _Terminal()
    Output(out=terminal).data(answer, tables)
    Output(out=pipe).data(answer, tables)
    Output(json=True, out=forced).data(answer, tables)

    assert "name" in terminal.getvalue() and EPOCH_ISO in terminal.getvalue()
    assert "{" not in terminal.getvalue()
    for text in (pipe.getvalue(), forced.getvalue()):
        assert json.loads(text) == {"agents": [{"name": "planner", "created_at": EPOCH_ISO}]}


def test_times_are_iso_8601_utc_and_zero_means_none() -> None:
    assert iso_time(EPOCH) == EPOCH_ISO
    shown = with_iso_times({"budgets": [{"window_start": 0}, {"window_start": 1795633412}]})
    assert shown == {"budgets": [{"window_start": None},
                                 {"window_start": "2026-11-25T19:03:32.000Z"}]}


# --- serve and config-check: one line, a documented status -------------------------------------


def _run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *argv],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture
def bad_policy_config(tmp_path: Path) -> Path:
    (tmp_path / "badpol.csv").write_text("g, a, role:x\np, a, b, Bogus:*, allow\n")
    config = BrokerConfig(port=free_port()).set("audit", dir="audit")
    config.use_policy_file("badpol.csv")
    path = tmp_path / "broker.toml"
    path.write_text(config.to_toml())  # not written through the loader: it would refuse
    return path


@pytest.mark.parametrize("command", ["serve", "config-check"])
def test_a_bad_policy_file_is_one_line_naming_file_and_line(
    bad_policy_config: Path, command: str
) -> None:
    done = _run_cli(command, "--config", str(bad_policy_config), cwd=bad_policy_config.parent)

    policy = bad_policy_config.parent / "badpol.csv"
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"a2a-broker: {policy}:2: unknown A2A operation 'Bogus' in action 'Bogus:*'\n"
    )


@pytest.mark.parametrize(
    ("toml", "files", "problem"),
    [
        ('[registry]\ncards_dir = "cards"\n', {}, "broker.toml:2: cards folder"),
        ('\n[keys]\nsigning_key_file = "key.pem"\n', {}, "broker.toml:3: cannot read signing key"),
        ('[keys]\nsigning_key_file = "key.pem"\n', {"key.pem": "not a key"},
         "broker.toml:2: signing key file"),
        ('[policy]\npolicy_file = "nope.csv"\n', {}, "broker.toml:2: cannot read"),
        ('[admin]\ntoken_sha256 = "secret"\n', {}, "broker.toml:2: [admin] token_sha256 is not"),
        ('[agents."Not Valid"]\ncredential_sha256 = ""\n', {},
         'broker.toml:1: [agents.Not Valid]: not a valid agent name'),
        ('[registry]\ncards_dir = "cards"\n', {"cards/bad.json": "{"}, "cards/bad.json: "),
        ('[audit.export]\nenabled = true\n[[audit.export.sinks]]\nname = "s"\nkind = "hec"\n'
         'token_env = "HEC_TOKEN"\n', {}, "broker.toml:6: sink s: token_env $HEC_TOKEN is not set"),
        # Asked for but unable to apply: refused rather than silently ignored.
        ('[datacontrols]\nenabled = true\nengine = "presidio"\n', {},
         'broker.toml:3: [datacontrols] engine = "presidio" needs the presidio extra'),
        # An MCP server is registered at start-up as config-check registers it.
        ('[mcp.servers.tools]\nurl = "https://tools.example/mcp"\n'
         'credential = { kind = "bearer", env = "NOT_SET_MCP" }\n', {},
         "broker.toml:1: MCP server 'tools': its credential is empty ($NOT_SET_MCP is not set)"),
        ('[egress]\nallow_loopback = false\n[mcp.servers.local]\nurl = "http://127.0.0.1:9/mcp"\n',
         {}, "broker.toml:3: "),
    ],
)
def test_config_check_loads_every_file_the_config_names(
    tmp_path: Path, toml: str, files: dict[str, str], problem: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    policy = "" if "[policy]" in toml else "[policy]\nallow_all = true\n"
    audit = "" if "[audit" in toml else '[audit]\ndir = "audit"\n'
    (tmp_path / "broker.toml").write_text(toml + audit + policy)

    done = _run_cli("config-check", "--config", "broker.toml", cwd=tmp_path)

    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("a2a-broker: ") and problem in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_config_check_of_the_demo_files_says_what_it_loaded(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(
        f'[registry]\ncards_dir = "{REPO_ROOT / "agent_cards"}"\n'
        f'[policy]\npolicy_file = "{REPO_ROOT / "policies" / "policy.csv"}"\n'
        '[audit]\ndir = "audit"\n[agents.demo-user]\ncredential_sha256 = "' + "ab" * 32 + '"\n'
        "[egress]\nallow_loopback = true\n"  # the demo agents listen on loopback
    )

    done = _run_cli("config-check", "--config", str(config), cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["policy"]["policy_file"].endswith("policy.csv")
    assert done.stderr.splitlines()[-1] == (
        f"ok: {config}: a policy of 26 rules, 3 card(s), 1 caller-only identity"
    )


def test_serve_on_a_port_in_use_is_one_line_and_status_3(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        BrokerConfig(port=port).set("audit", dir="a").write(tmp_path / "broker.toml")
        done = _run_cli("serve", "--config", "broker.toml", cwd=tmp_path)

    assert done.returncode == 3
    assert done.stderr == (
        f"a2a-broker: cannot listen on 127.0.0.1:{port}: the port is in use ([server] port)\n"
    )


def test_a_start_up_failure_in_the_worker_is_one_error_line_and_status_3(tmp_path: Path) -> None:
    config = BrokerConfig(port=free_port()).set("audit", backend="redis")
    config.use_redis(f"redis://127.0.0.1:{free_port()}/0", key_prefix="a2ab")
    config.write(tmp_path / "broker.toml")

    done = _run_cli("serve", "--config", "broker.toml", cwd=tmp_path)

    *logged, said = done.stderr.splitlines()
    lines = [json.loads(line) for line in logged]  # the broker's log: JSON lines
    errors = [line for line in lines if line["level"] == "error"]
    assert done.returncode == 3
    assert said.startswith("a2a-broker: cannot start: Redis audit read failed")
    assert [e["logger"] for e in errors if e["logger"] != "a2a_broker.server"] == ["a2a_broker"]
    (ours,) = [e for e in errors if e["logger"] == "a2a_broker"]
    assert ours["message"].startswith("cannot start: ") and "exception" not in ours
    assert all("exception" not in line and "\n" not in line.get("message", "") for line in lines)


def test_demo_on_a_busy_port_is_one_line_and_status_3(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = _run_cli("demo", "--port", str(port), "--state-dir", str(state), cwd=tmp_path)

    assert done.returncode == 3
    assert done.stderr == (
        f"a2a-broker: cannot start the demo: 127.0.0.1:{port} is in use (give another --port)\n"
    )
    assert not state.exists()


def test_a_demo_agent_whose_port_is_taken_moves_to_a_free_one(tmp_path: Path) -> None:
    from broker.demo import AGENT_NAMES, find_cards_dir
    from broker.demo.agents import card_port, load_card
    from broker.demo.launcher import place_cards

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken = busy.getsockname()[1]
        for name in AGENT_NAMES:
            card = load_card(name, port=taken if name == "researcher" else None,
                             cards_dir=find_cards_dir())
            (shipped / f"{name}.json").write_text(json.dumps(MessageToDict(card)))

        placed = place_cards(tmp_path / "state", shipped, "127.0.0.1")

    moved = card_port(load_card("researcher", cards_dir=placed))
    assert moved != taken
    with socket.create_server(("127.0.0.1", moved)):
        pass  # free: the agent can listen there


def test_a_demo_child_that_fails_is_reported_in_one_line(tmp_path: Path) -> None:
    from broker.demo.launcher import Child, ChildFailedError, check_alive

    log = tmp_path / "broker.log"
    log.write_text(
        '{"ts":"2026-12-05T13:36:43.187Z","level":"info","logger":"a2a_broker","message":"hi"}\n'
        '{"ts":"2026-12-05T13:36:43.206Z","level":"error","logger":"a2a_broker",'
        '"message":"cannot start: Redis audit read failed"}\n'
        '{"ts":"2026-12-05T13:36:43.212Z","level":"info","logger":"a2a_broker.server",'
        '"message":"bye"}\n'
    )
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()

    with pytest.raises(ChildFailedError) as raised:
        check_alive(Child("broker", process, log))

    assert str(raised.value) == (
        f"broker exited with status 3: cannot start: Redis audit read failed (log: {log})"
    )


def test_serve_runs_uvicorn_without_its_forwarded_header_rewrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing in the broker reads a request's client address or scheme (links come from
    ``[server] public_url``, the cookie's Secure flag from ``[console] secure_cookie``), so
    uvicorn's X-Forwarded-* middleware is left out (decision 0100)."""
    ran: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(kw, app=app))
    BrokerConfig(port=free_port()).set("audit", dir="a").write(tmp_path / "broker.toml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)  # serve sets it for its workers

    assert main(["serve", "--config", "broker.toml"]) == 0

    assert ran["app"] == "broker.http.app:app_from_environment"
    assert ran["proxy_headers"] is False
