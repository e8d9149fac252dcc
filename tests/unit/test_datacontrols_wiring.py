"""How ``[datacontrols]`` reaches the pipelines: off builds nothing, on builds the controls once
from the settings, and ``config-check`` accepts the built-in engine (it refuses only an engine
that cannot load: ``tests/unit/test_cli.py``)."""

from __future__ import annotations

from pathlib import Path

from broker.cli.preflight import check_files
from broker.datacontrols import DataControls, Subject, open_controls
from broker.settings import load_settings
from testkit.config import BrokerConfig


def test_nothing_is_built_when_data_controls_are_off() -> None:
    assert open_controls(load_settings(None, environ={}).datacontrols) is None


def test_config_check_accepts_data_controls_and_the_broker_builds_them(tmp_path: Path) -> None:
    config = BrokerConfig(port=8080).set("audit", dir=str(tmp_path / "audit"))
    config.set(
        "datacontrols",
        enabled=True,
        rules=[{"models": ["external/*"], "actions": {"secret:*": "block"}}],
        flows=[{"tags": ["pii:*"], "agents": ["partner-*"]}],
    )
    path = config.write(tmp_path / "broker.toml")
    settings = load_settings(str(path), environ={})

    check_files(settings, str(path), environ={})  # raises SettingsError on a refusal

    built = open_controls(settings.datacontrols)
    assert isinstance(built, DataControls)
    subject = Subject("request", "a", model="external/gpt")
    assert built.policy.action(subject, "secret:aws_key") == "block"
