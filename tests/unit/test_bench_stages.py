"""Benchmark scenarios (d) and (h): the configurations they write, and their report sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# benchmarks/ is not part of the installed package: import it from the checkout
from benchmarks.report_stages import scale_section, stages_section
from benchmarks.scenario_stages import (
    SCALES,
    STAGES,
    StageConfig,
    _config,
    write_cards,
    write_policy,
)
from benchmarks.targets import AGENT, CALLER
from broker.policy import PolicyEngine
from broker.policy_runtime import check_policy_settings
from broker.settings import load_settings

MODEL = (Path(__file__).resolve().parents[2] / "policies" / "model.conf").read_text()


@pytest.mark.parametrize("filler", [0, 1_000])
def test_the_policy_lets_loadgen_start_work_and_message_bench(tmp_path: Path, filler: int) -> None:
    rules = write_policy(tmp_path / "policy.csv", filler)
    engine = PolicyEngine(MODEL)
    engine.swap(engine.load_text((tmp_path / "policy.csv").read_text(), "policy.csv"))
    assert rules == filler + 2
    assert engine.may_originate(CALLER).allowed
    assert engine.decide_chain([CALLER], AGENT, "SendMessage:echo").allowed
    assert not engine.decide_chain([CALLER], "agent-1", "SendMessage:echo").allowed


def _settings(tmp_path: Path, cfg: StageConfig) -> Any:
    files = {"cards": str(tmp_path / "cards"), "audit": str(tmp_path / "audit")}
    if cfg.policy_filler is not None:
        files["policy"] = str(tmp_path / "policy.csv")
    digests = write_cards(tmp_path / "cards", "http://127.0.0.1:9", 3)
    config = _config(8080, "redis://127.0.0.1:6379/0", cfg, files, digests)
    config.write(tmp_path / "broker.toml", env={})
    return load_settings(str(tmp_path / "broker.toml"), environ={})


@pytest.mark.parametrize("name", [*STAGES, *SCALES])
def test_every_configuration_is_one_the_broker_accepts(tmp_path: Path, name: str) -> None:
    cfg = {**STAGES, **SCALES}[name]
    settings = _settings(tmp_path, cfg)
    assert settings.store.backend == cfg.store
    assert settings.audit.backend == ("file" if cfg.audit else "off")
    assert bool(settings.policy.policy_file) == (cfg.policy_filler is not None)
    # Without a policy file, allow_all says so explicitly: the broker would not start otherwise.
    assert check_policy_settings(settings) == (cfg.policy_filler is None)
    assert bool(settings.budgets.agents) == (cfg.metering != "none")
    assert bool(settings.budgets.agent_rates) == (cfg.metering == "rate")
    assert set(settings.agents) == {AGENT, CALLER, "agent-0", "agent-1", "agent-2"}


def test_the_base_of_d_has_every_optional_stage_off(tmp_path: Path) -> None:
    settings = _settings(tmp_path, STAGES["d-off"])
    assert (settings.store.backend, settings.audit.backend) == ("memory", "off")
    assert not settings.policy.policy_file and settings.policy.allow_all
    assert not settings.budgets.agents
    assert not settings.containment.breaker.enabled
    assert settings.containment.max_concurrent_per_agent == 0


def test_d_containment_is_the_base_with_the_default_breaker_and_bulkhead(tmp_path: Path) -> None:
    settings = _settings(tmp_path, STAGES["d-containment"])
    assert settings.containment == load_settings(environ={}).containment
    assert settings.audit.backend == "off" and not settings.budgets.agents


def _point(scenario: str, c: int, cpu: float, foreign: float = 0.0) -> dict[str, Any]:
    return {"scenario": scenario, "concurrency": c, "rps": 1e6 / cpu, "p50_ms": cpu / 100,
            "p99_ms": cpu / 50, "cpu_us_per_req": cpu, "rss_mb": 100.0, "errors": 0,
            "foreign_cores": foreign}  # fmt: skip


def test_stages_section_shows_what_each_stage_adds_over_the_base() -> None:
    points = [_point(s, 16, cpu) for s, cpu in
              (("d-off", 500), ("d-audit", 600), ("d-policy", 510), ("d-rate", 560),
               ("d-redis", 700), ("d-all", 900))]  # fmt: skip
    text = "\n".join(stages_section({"points": points}))
    assert "| +100 |" in text  # audit
    assert "| +400 |" in text  # all
    assert "add +370 µs/req between them; all together add +400 µs/req" in text


def test_scale_verdict_is_met_not_met_or_inconclusive() -> None:
    points = [
        _point("h-memory-small", 16, 500), _point("h-memory-10k", 16, 520),
        _point("h-redis-small", 16, 500), _point("h-redis-10k", 16, 800),
    ]  # fmt: skip
    text = "\n".join(scale_section({"points": points}))
    assert "**memory store: met** (mean 1.04" in text
    assert "**redis store: not met** (mean 1.60" in text
    noisy = [*points[:3], _point("h-redis-10k", 16, 800, foreign=1.0)]
    assert "**redis store: inconclusive**" in "\n".join(scale_section({"points": noisy}))
