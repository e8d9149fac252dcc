"""Scenarios (d) and (h): what each pipeline stage costs, and what registry and policy size cost.

(d) starts the broker with everything that can be switched off switched off (memory store,
``[audit] backend = "off"``, no policy file, no budget, no breaker or bulkhead; token minting
always runs), then once
per stage with that stage alone switched on, then with all of them on.

(h) starts the broker (the full pipeline, with a policy file) with 10,000 extra registered
agents and 10,000 filler policy lines, and the same broker with only the two agents the load
needs and no filler, on the memory and on the redis store; the two run side by side and are
measured in turn at each concurrency.

Every broker here registers its agents declaratively (``[registry] cards_dir`` plus
``[agents.NAME] credential_sha256``), so 10,000 agents cost one start-up, not 10,000 admin calls.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.measure import UNARY, measure
from benchmarks.proc_stats import rss_bytes
from benchmarks.targets import AGENT, CALLER, Env, Target, metered, redis_url
from benchmarks.upstream import card
from testkit.config import BrokerConfig
from testkit.procs import closed_url, free_port

if TYPE_CHECKING:
    from benchmarks.run import Run

STAGE_FILLER_LINES = 1_000  # filler policy rules in (d-policy) and (d-all)
MANY = 10_000  # (h): extra registered agents, and filler policy rules
CONCURRENCIES = (1, 16, 64)  # as benchmarks/run.py's
START_TIMEOUT_S = 180.0  # 10,000 cards are validated one by one at start-up


@dataclass(frozen=True)
class StageConfig:
    """One broker configuration. ``policy_filler`` None: no policy file (everyone may call
    everyone); a number: a policy file with the two rules the load needs plus that many more."""

    store: str = "memory"
    audit: bool = False  # True: the default [audit] (file backend, fsync); False: "off"
    policy_filler: int | None = None
    metering: str = "none"  # benchmarks.targets.METERING
    extra_agents: int = 0  # registered besides ``bench`` and ``loadgen``
    containment: bool = False  # the default breaker and bulkhead; False: both switched off
    metrics: bool = True  # [metrics] enabled (benchmarks/metrics_costs.py compares both)
    datacontrols: bool = False  # [datacontrols] enabled, the default rules (every type tagged)


# (d): the base, then each stage alone over it, then all of them.
STAGES: dict[str, StageConfig] = {
    "d-off": StageConfig(),
    "d-audit": StageConfig(audit=True),
    "d-policy": StageConfig(policy_filler=STAGE_FILLER_LINES),
    "d-budget": StageConfig(metering="budget"),
    "d-rate": StageConfig(metering="rate"),
    "d-redis": StageConfig(store="redis"),
    "d-containment": StageConfig(containment=True),
    "d-datacontrols": StageConfig(datacontrols=True),
    "d-all": StageConfig(
        store="redis",
        audit=True,
        policy_filler=STAGE_FILLER_LINES,
        metering="rate",
        containment=True,
    ),
}


def _scale(store: str, many: bool) -> StageConfig:
    """(h): the full pipeline as in (c)/(e), with a policy file; large or small."""
    return StageConfig(
        store=store,
        audit=True,
        policy_filler=MANY if many else 0,
        metering="budget",
        extra_agents=MANY if many else 0,
        containment=True,
    )


SCALES: dict[str, StageConfig] = {
    "h-memory-small": _scale("memory", many=False),
    "h-memory-10k": _scale("memory", many=True),
    "h-redis-small": _scale("redis", many=False),
    "h-redis-10k": _scale("redis", many=True),
}


def _needed_rules() -> list[str]:
    """What the load needs: ``loadgen`` starts work and sends messages to ``bench``."""
    return [f"p, {CALLER}, *, originate, allow", f"p, {CALLER}, {AGENT}, SendMessage:*, allow"]


def write_policy(path: Path, filler: int) -> int:
    """A policy of ``filler`` synthetic rules (benchmarks/policy_decisions.py's shape) followed
    by the rules the load needs, last, so a cold decision scans everything. Its rule count."""
    from benchmarks.policy_decisions import synthetic_policy

    rules = synthetic_policy(filler).splitlines() if filler else []
    rules += _needed_rules()
    path.write_text("\n".join(rules) + "\n")
    return len(rules)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def write_cards(folder: Path, upstream_url: str, extra: int) -> dict[str, str]:
    """Card files for ``bench``, ``loadgen`` and ``extra`` agents ``agent-<i>`` (the names the
    synthetic policy's role lines use); each agent's credential digest, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    closed = closed_url()  # loadgen is a target nobody calls
    names = {AGENT: upstream_url, CALLER: closed} | {f"agent-{i}": closed for i in range(extra)}
    salt = secrets.token_hex(8)
    for name, url in names.items():
        (folder / f"{name}.json").write_text(json.dumps(card(name, url)))
    return {name: _digest(f"{salt}-{name}") for name in names}


def _config(
    port: int, redis: str, cfg: StageConfig, files: dict[str, str], digests: dict[str, str]
) -> BrokerConfig:
    """The broker's configuration: ``files`` holds the cards dir, audit dir and policy file
    paths, ``digests`` each identity's credential digest."""
    config = BrokerConfig(port=port).set("server", log_level="info")
    config.set(
        "store", backend=cfg.store, redis_url=redis, key_prefix=f"a2ab-bench-{secrets.token_hex(4)}"
    )
    config.set("registry", cards_dir=files["cards"])
    if cfg.audit:
        config.set("audit", dir=files["audit"], fsync=True)
    else:
        config.set("audit", backend="off")
    if "policy" in files:
        config.use_policy_file(files["policy"])
    metered(config, cfg.metering)
    if not cfg.containment:
        config.set("containment", max_concurrent_per_agent=0)
        config.set("containment.breaker", enabled=False)
    config.set("metrics", enabled=cfg.metrics)
    if cfg.datacontrols:
        config.set("datacontrols", enabled=True)
    for name, digest in digests.items():
        config.set(f"agents.{name}", credential_sha256=digest)
    return config


@contextlib.contextmanager
def stage_broker(env: Env, name: str, cfg: StageConfig) -> Iterator[tuple[Target, dict[str, Any]]]:
    """The broker configured as ``cfg``, and how it started (seconds to ready, RSS then)."""
    home = env.log_dir / name
    home.mkdir(parents=True, exist_ok=True)
    files = {"cards": str(home / "cards"), "audit": str(home / "audit")}
    rules = 0
    if cfg.policy_filler is not None:
        files["policy"] = str(home / "policy.csv")
        rules = write_policy(home / "policy.csv", cfg.policy_filler)
    digests = write_cards(home / "cards", env.upstream_url, cfg.extra_agents)
    credential = f"a2ab_bench_{secrets.token_urlsafe(24)}"
    digests[CALLER] = _digest(credential)
    port = free_port()
    redis = redis_url(env) if cfg.store == "redis" else "redis://127.0.0.1:6379/0"
    config = _config(port, redis, cfg, files, digests)
    started = time.monotonic()
    broker = env.broker(config, "broker", env.placement.sut, log_dir=home)
    child = broker.process
    try:
        broker.wait_ready(timeout=START_TIMEOUT_S)
        launch = {
            "scenario": name,
            **asdict(cfg),
            "agents": len(digests),
            "policy_rules": rules,
            "start_s": time.monotonic() - started,
            "rss_start_mb": rss_bytes(child.pid) / 2**20,
        }
        print(f"  {name:<10} ready in {launch['start_s']:.1f} s, {launch['agents']:,} agents, "
              f"{rules:,} rules, rss {launch['rss_start_mb']:.0f} MB", flush=True)  # fmt: skip
        headers = {
            "Content-Type": "application/json",
            "A2A-Version": "1.0",
            "Authorization": f"Bearer {credential}",
        }
        private = redis if cfg.store == "redis" and env.redis_note.startswith("a private") else ""
        target = Target(
            broker.jsonrpc_url(AGENT),
            headers,
            child,
            private,
            metrics_url=f"{broker.url}/metrics",
            metrics_headers=broker.admin_headers,
        )
        yield target, launch
    finally:
        child.stop()


def compile_broker(env: Env) -> None:
    """Byte-compile the broker's code once, so the first start timed here does not also pay
    for compiling it (a ``--broker-ref`` snapshot starts without ``__pycache__``)."""
    argv = [sys.executable, "-m", "compileall", "-q", str(env.broker_src / "broker")]
    subprocess.run(argv, check=True, capture_output=True, timeout=300)


def _measure_each(run: Run, configs: dict[str, StageConfig]) -> None:
    compile_broker(run.env)
    for name, cfg in configs.items():
        with stage_broker(run.env, name, cfg) as (target, launch):
            run.launches.append(launch)
            run.unary(name, target)


def scenario_d(run: Run) -> None:
    _measure_each(run, STAGES)


def scenario_h(run: Run) -> None:
    """Small and large side by side, alternating at each c, so drift in the machine's load
    over the minutes a run takes does not land on one of them only."""
    compile_broker(run.env)
    for store in ("memory", "redis"):
        names = (f"h-{store}-small", f"h-{store}-10k")
        with contextlib.ExitStack() as stack:
            targets = {}
            for name in names:
                target, launch = stack.enter_context(stage_broker(run.env, name, SCALES[name]))
                run.launches.append(launch)
                targets[name] = target
            for c in CONCURRENCIES:
                for name, target in targets.items():
                    run.points += measure(
                        name,
                        target=target,
                        workload=UNARY,
                        concurrencies=(c,),
                        seconds=run.seconds,
                        work_dir=run.work_dir,
                        conditions=run.conditions,
                    )
