from __future__ import annotations

from pathlib import Path

import pytest

from broker.settings import SettingsError, load_settings


def test_defaults_need_no_file() -> None:
    settings = load_settings(None, environ={})
    assert settings.store.backend == "memory"
    assert settings.public_url == "http://127.0.0.1:8080"


def test_file_from_environment_variable(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text("[server]\nport = 9000\n[limits]\nmax_json_depth = 10\n")
    settings = load_settings(None, environ={"A2A_BROKER_CONFIG": str(config)})
    assert settings.server.port == 9000 and settings.limits.max_json_depth == 10
    assert settings.path("cards") == tmp_path / "cards"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[server]\nprot = 1\n", "prot"),
        ("[limits]\nmax_body_bytes = 'big'\n", "max_body_bytes"),
        ("[stroe]\nbackend = 'redis'\n", "stroe"),
        ("[store]\nbackend = 'postgres'\n", "backend"),
        ("base_dir = '/'\n", "base_dir"),
    ],
)
def test_unknown_or_mistyped_keys_are_named(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=named):
        load_settings(str(config), environ={})


def test_missing_upstream_secret_is_named(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('[upstream_credentials.billing]\nenv = "BILLING_TOKEN"\n')
    with pytest.raises(SettingsError, match="BILLING_TOKEN"):
        load_settings(str(config), environ={})
    settings = load_settings(str(config), environ={"BILLING_TOKEN": "s3cret"})
    assert settings.upstream_credentials["billing"].value == "s3cret"


def test_invalid_toml_and_missing_file_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(str(bad), environ={})
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(str(tmp_path / "nope.toml"), environ={})


def test_config_check_prints_settings_but_never_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from broker.cli import main

    config = tmp_path / "broker.toml"
    config.write_text(
        '[upstream_credentials.billing]\nenv = "BILLING_TOKEN"\n'
        "[policy]\nallow_all = true\n"
        '[llm.providers.p]\nbase_url = "http://127.0.0.1:1/v1"\nkey_env = "P_KEY"\n'
    )
    monkeypatch.setenv("BILLING_TOKEN", "upstream-secret")
    monkeypatch.setenv("P_KEY", "provider-secret")
    monkeypatch.setenv("A2A_BROKER_ADMIN_TOKEN", "admin-secret")
    assert main(["config-check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert '"port": 8080' in out
    assert "secret" not in out


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[server]\nhost = 'x'\nprot = 1\n", "3: unknown key `server.prot`"),
        ("[agent.demo-user]\ncredential_sha256 = ''\n", "1: unknown key `agent`"),
        ("[agents.a]\ncredential_sha256 = ''\n[agents.b]\ncredential = ''\n",
         "4: unknown key `agents.b.credential`"),
        ("[server]\nlog_level = 'verbose'\n",
         "2: `server.log_level`: Invalid enum value 'verbose'"
         " (valid: 'debug', 'info', 'warning', 'error')"),
        ('[budgets.agents]\nplanner = [{ metric = "calls", window = "week", limit = 1 }]\n',
         "2: `budgets.agents.planner[0].window`: Invalid enum value 'week'"
         " (valid: 'minute', 'hour', 'day', 'month', 'lifetime')"),
        ('[[audit.export.sinks]]\nname = "a"\nkind = "jsonl"\n'
         '[[audit.export.sinks]]\nname = "b"\nkind = "kafka"\n',
         "6: `audit.export.sinks[1].kind`: Invalid enum value 'kafka'"
         " (valid: 'syslog', 'hec', 'jsonl')"),
        ("[server]\nport = 'eighty'\n", "2: `server.port`: Expected `int`, got `str`"),
        ("[server]\nport = 80\n[server\n", "3: not valid TOML: "),
        ('\n[upstream_credentials.billing]\nenv = "BILLING_TOKEN"\n',
         "3: upstream_credentials.billing.env names $BILLING_TOKEN, which is not set"),
        ('[llm.providers.p]\nbase_url = "ftp://x"\n',
         "2: llm.providers.p.base_url must be an http(s) URL"),
    ],
)
def test_problems_say_file_line_and_what(tmp_path: Path, text: str, problem: str) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(text)

    with pytest.raises(SettingsError) as raised:
        load_settings(str(config), environ={})

    assert str(raised.value).startswith(f"{config}:{problem}"), str(raised.value)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("", "no [policy] policy_file"),
        ('[policy]\npolicy_file = "p.csv"\nallow_all = true\n', "both policy_file and allow_all"),
    ],
)
def test_config_check_refuses_a_config_without_exactly_one_policy_choice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: str, message: str
) -> None:
    """No policy file used to allow everything; now that must be said explicitly."""
    from broker.cli import main

    config = tmp_path / "broker.toml"
    config.write_text("[server]\nport = 8181\n" + policy)
    assert main(["config-check", "--config", str(config)]) == 2
    assert message in capsys.readouterr().err
