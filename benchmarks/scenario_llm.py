"""Scenario (i): the broker's LLM endpoint beside LiteLLM's proxy, against one fake provider.

  i-direct   wrk straight to the fake OpenAI-compatible provider (the floor)
  i-broker   the broker's ``POST /v1/chat/completions`` (memory store, 1 worker), with a
             registered agent's credential; ``[llm]`` names the fake provider and nothing else
             (no policy file, no budgets, no rate limit)
  i-litellm  LiteLLM's proxy (``litellm --num_workers 1``, no database, a master key), with
             ``openai/bench-model`` at the same provider

Both systems under test run on the sut core; the provider runs with the other helpers. LiteLLM
lives in a venv of its own (``benchmarks/litellm_venv.py``); when it cannot be installed or
started, the run records an ``unavailable`` row and goes on.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.fake_llm import ANSWER_TEXT, CHAT_PATH
from benchmarks.litellm_venv import LITELLM_VERSION, OFFLINE_ENV, config_yaml, litellm_command
from benchmarks.measure import Point, Workload, measure
from benchmarks.targets import Env, Target, register_bench
from testkit.config import BrokerConfig
from testkit.procs import free_port

if TYPE_CHECKING:
    from benchmarks.run import Run

CONCURRENCIES = (1, 16, 64)
MODEL = "bench-model"
CHAT_BODY = b'{"model":"%s","messages":[{"role":"user","content":"hello"}],"max_tokens":16}' % (
    MODEL.encode()
)
CHAT = Workload(CHAT_BODY, b'"%s"' % ANSWER_TEXT.encode())
PROVIDER_KEY_ENV = "A2A_BENCH_LLM_KEY"
_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class LlmPoint(Point):
    """A point of scenario (i): what answered it, or why nothing could be measured."""

    software: str = ""
    unavailable: str = ""


def scenario_i(run: Run) -> None:
    with fake_provider(run.env) as provider:
        api_base = provider.url.removesuffix(CHAT_PATH) + "/v1"
        _measure(run, "i-direct", provider, "fake provider (benchmarks/fake_llm.py)")
        with broker_llm(run.env, api_base) as target:
            _measure(run, "i-broker", target, "a2a-broker (memory store, 1 worker)")
        software = f"litellm[proxy] {LITELLM_VERSION} (1 worker, no database)"
        try:
            with litellm_proxy(run.env, api_base) as target:
                _measure(run, "i-litellm", target, software)
        # Not installable, not starting, or a wrong first answer (preflight): a third-party
        # failure, so the run records why and goes on (LiteLLMUnavailableError, ProcessStartError
        # and preflight's errors are RuntimeErrors; urllib's are OSErrors).
        except (RuntimeError, OSError) as exc:
            why = " ".join(str(exc).split())[:800]
            print(f"  i-litellm  unavailable: {why}", flush=True)
            run.points.append(unavailable("i-litellm", software, why))


def _measure(run: Run, scenario: str, target: Target, software: str) -> None:
    points = measure(
        scenario,
        target=target,
        workload=CHAT,
        concurrencies=CONCURRENCIES,
        seconds=run.seconds,
        work_dir=run.work_dir,
        conditions=run.conditions,
    )
    run.points += [LlmPoint(**asdict(p), software=software) for p in points]


def unavailable(scenario: str, software: str, why: str) -> LlmPoint:
    """The row that stands for a system that could not be measured in this run."""
    return LlmPoint(
        scenario=scenario, concurrency=0, rps=0.0, p50_ms=0.0, p99_ms=0.0, errors=0,
        requests=0, cpu_us_per_req=0.0, cpu_util=0.0, sys_share=0.0, rss_mb=0.0,
        foreign_cores=0.0, waited_s=0.0, software=software, unavailable=why,
    )  # fmt: skip


@contextlib.contextmanager
def fake_provider(env: Env) -> Iterator[Target]:
    """The fake provider, pinned with the other helpers; the target is its chat URL."""
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.fake_llm", "--port", str(port), "--model", MODEL]
    child = env.launch("fake-llm", argv, env.placement.rest)
    try:
        url = f"http://127.0.0.1:{port}"
        child.wait_ready(url + "/_ready")
        yield Target(url + CHAT_PATH, {**_JSON, "Authorization": "Bearer sk-bench"}, child)
    finally:
        child.stop()


def _broker_config(port: int, api_base: str) -> BrokerConfig:
    config = BrokerConfig(port=port).set("server", workers=1, log_level="info")
    config.set("store", backend="memory", key_prefix=f"a2ab-bench-{secrets.token_hex(4)}")
    return config.set(
        "llm.providers.fake", base_url=api_base, key_env=PROVIDER_KEY_ENV, models=[MODEL]
    )


@contextlib.contextmanager
def broker_llm(env: Env, api_base: str) -> Iterator[Target]:
    """The broker with ``[llm]`` at the fake provider; the target is its chat endpoint."""
    config = _broker_config(free_port(), api_base)
    broker = env.broker(config, "broker-llm", env.placement.sut,
                        env_extra={PROVIDER_KEY_ENV: "sk-bench-provider"})  # fmt: skip
    try:
        broker.wait_ready()
        credential = register_bench(broker, env.upstream_url)
        headers = {**_JSON, "Authorization": f"Bearer {credential}"}
        yield Target(broker.url + CHAT_PATH, headers, broker.process)
    finally:
        broker.stop()


@contextlib.contextmanager
def litellm_proxy(env: Env, api_base: str, venv: Path | None = None) -> Iterator[Target]:
    """LiteLLM's proxy (installed on first use), 1 worker, offline; raises
    LiteLLMUnavailableError or ProcessStartError when it cannot be had."""
    command = litellm_command(venv)
    port, master_key = free_port(), "sk-" + secrets.token_hex(16)
    config = env.log_dir / "litellm.yaml"
    config.write_text(config_yaml(MODEL, api_base, master_key))
    argv = [str(command), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]  # fmt: skip
    # Run from the log folder with no PYTHONPATH: nothing of the project's (a .env file that
    # python-dotenv would load, its modules) reaches LiteLLM's venv.
    child_env = {**OFFLINE_ENV, "PYTHONPATH": ""}
    child = env.launch("litellm", argv, env.placement.sut, env=child_env, cwd=env.log_dir)
    try:
        url = f"http://127.0.0.1:{port}"
        child.wait_ready(f"{url}/health/liveliness", timeout=180.0)
        yield Target(url + CHAT_PATH, {**_JSON, "Authorization": f"Bearer {master_key}"}, child)
    finally:
        child.stop()
