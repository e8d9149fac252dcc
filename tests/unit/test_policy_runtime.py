"""Policies taking effect, and policy files refused, are audited with file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.audit_runtime import open_recorder
from broker.keys import BrokerKeys
from broker.policy.rules import PolicyError
from broker.policy_runtime import PolicyRuntime
from broker.settings import load_settings

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
    lines = (tmp_path / "var" / "audit" / "audit-unit.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    kinds = [r["kind"] for r in records if r["kind"] != "checkpoint"]
    assert kinds == ["policy.reload", "policy.reload", "policy.error"]
    error = records[[r["kind"] for r in records].index("policy.error")]
    assert error["detail"]["line"] == 3 and error["detail"]["file"] == str(policy)
