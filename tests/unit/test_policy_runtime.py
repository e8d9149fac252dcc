"""Policies taking effect, and policy files refused, are audited with file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.audit.recorder import open_recorder
from broker.identity.keys import BrokerKeys
from broker.policy.rules import PolicyError
from broker.policy.runtime import PolicyRuntime
from broker.settings import SettingsError, load_settings
from testkit.audit_files import audit_text

GOOD = "g, alice, role:user\np, role:user, *, originate, allow\n"


async def test_loads_reloads_and_refusals_are_audited(tmp_path: Path) -> None:
    policy = tmp_path / "policy.csv"
    policy.write_text(GOOD)
    config = tmp_path / "broker.toml"
    config.write_text(
        f'[policy]\npolicy_file = "{policy}"\nreload_interval_s = 60\n'
        '[audit]\nreplica = "unit"\nfsync = false\n'
    )
    settings = load_settings(str(config), environ={})
    audit = await open_recorder(settings, BrokerKeys.from_settings(settings))
    runtime = await PolicyRuntime.start(settings, audit)
    assert runtime.reloader is not None
    try:
        policy.write_text(GOOD + "p, role:user, *, SendMessage:*, allow\n")
        await runtime.reloader.reload_now()
        policy.write_text(GOOD + "p, role:nobody, *, *, allow\n")  # unknown role: refused
        with pytest.raises(PolicyError, match="role:nobody"):
            await runtime.reloader.reload_now()
    finally:
        await runtime.stop()
        await audit.close()
    lines = audit_text(tmp_path / "var" / "audit" / "audit-unit.jsonl").splitlines()
    records = [json.loads(line) for line in lines]
    kinds = [r["kind"] for r in records if r["kind"] != "checkpoint"]
    assert kinds == ["policy.reload", "policy.reload", "policy.error"]
    error = records[[r["kind"] for r in records].index("policy.error")]
    assert error["detail"]["line"] == 3 and error["detail"]["file"] == str(policy)


@pytest.mark.parametrize("empty", ["", "# only a comment\n", "g, alice, role:user\n"])
async def test_an_empty_policy_stops_start_up_and_never_replaces_a_good_one(
    tmp_path: Path, empty: str
) -> None:
    """Issue 11: an empty file reloaded fine and then refused everything."""
    policy = tmp_path / "policy.csv"
    policy.write_text(empty)
    config = tmp_path / "broker.toml"
    config.write_text(
        f'[policy]\npolicy_file = "{policy}"\nreload_interval_s = 60\n[audit]\nbackend = "off"\n'
    )
    settings = load_settings(str(config), environ={})
    audit = await open_recorder(settings, BrokerKeys.from_settings(settings))
    with pytest.raises(PolicyError, match="no p rule"):
        await PolicyRuntime.start(settings, audit)

    policy.write_text(GOOD)
    runtime = await PolicyRuntime.start(settings, audit)
    assert runtime.reloader is not None and runtime.engine is not None
    try:
        good = runtime.engine.version
        policy.write_text(empty)
        with pytest.raises(PolicyError, match="no p rule"):
            await runtime.reloader.reload_now()
        assert runtime.engine.version == good
    finally:
        await runtime.stop()
        await audit.close()


async def test_no_policy_file_starts_only_with_allow_all(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('[audit]\nbackend = "off"\n')
    settings = load_settings(str(config), environ={})
    audit = await open_recorder(settings, BrokerKeys.from_settings(settings))
    with pytest.raises(SettingsError, match="allow_all = true"):
        await PolicyRuntime.start(settings, audit)

    config.write_text('[audit]\nbackend = "off"\n[policy]\nallow_all = true\n')
    allowing = load_settings(str(config), environ={})
    runtime = await PolicyRuntime.start(allowing, audit)
    assert runtime.engine is None  # every hop allowed, because the config says so
