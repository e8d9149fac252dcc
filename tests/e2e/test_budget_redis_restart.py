"""A budget stays exact when its Redis is killed and restarted under load (issue 4, "Done when").

A private redis-server with persistence as production runs it (append-only file, fsync on every
write), two broker processes on it, and a fake provider (``tests/e2e/fake_llm.py``, in this
process, answering after a short delay as a real provider does, so calls are in flight when
Redis dies). A few workers make a steady stream of chat calls through the real ``openai`` client
(``max_retries=0``, unary and streamed, alternating brokers). Mid-load the redis-server is
SIGKILLed; while it is down the brokers answer 503 and the provider gets nothing new. It is
restarted on the same port and dir (it reloads its append-only file), and the same broker
processes serve again. Once the reservations' ttl has passed nothing is held; the agent is then
driven to its limit: exactly N calls of the agent's budget are used and the provider saw at most
N calls in all (before, during and after the crash): every call the provider answered is charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from aiohttp import web

from testkit.audit_files import audit_text
from testkit.brokers import generate_signing_key, launch_broker
from testkit.config import BrokerConfig, budget
from testkit.procs import all_stopped, closed_url, free_port, local_url
from testkit.redis_server import RedisServer

from .conftest import _static_card
from .fake_llm import FakeLlm
from .test_budget_race import _call

PROVIDER_KEY = f"sk-restart-{secrets.token_hex(8)}"
PROVIDER_KEY_ENV = "E2E_RESTART_PROVIDER_KEY"
KEY_PREFIX = "restart"
AGENT = "restarter"
MODEL = "fake-small"
BROKERS = 2

LIMIT = 60  # calls per day
RESERVATION_TTL_S = 5
PROVIDER_LATENCY_S = 0.15  # a provider answers after a while: calls are in flight at the kill
WORKERS, PAUSE_S = 3, 0.15  # ~10 calls/s in all, so the stream cannot reach LIMIT by itself
BEFORE_S, DOWN_S, AFTER_S = 1.5, 1.5, 2.0
RECOVERY_GRACE_S = 0.5  # calls started this long after the restart must all succeed
PROVIDER_SLACK_S = 0.1  # a call reserved just before the kill may reach the provider just after


def _config(redis_url: str, public_url: str, key_file: Path, fake_url: str) -> BrokerConfig:
    """What both replicas share (each gets its own port and audit dir)."""
    config = BrokerConfig(port=0).set("server", public_url=public_url, log_level="warning")
    config.use_redis(redis_url, key_prefix=KEY_PREFIX).set("keys", signing_key_file=key_file)
    config.set("audit", fsync=False).set("llm", reservation_ttl_s=RESERVATION_TTL_S)
    config.set(
        "llm.providers.fake",
        base_url=f"{fake_url}/v1",
        key_env=PROVIDER_KEY_ENV,
        models=[MODEL],
        price_in_per_mtok=2.0,
        price_out_per_mtok=10.0,
        timeout_s=5.0,
    )
    config.set("budgets", reservation_ttl_s=RESERVATION_TTL_S, expire_interval_s=0.5)
    return config.set("budgets.agents", **{AGENT: [budget("calls", "day", LIMIT)]})


# --- processes -----------------------------------------------------------------------------


@dataclass
class SlowFakeLlm(FakeLlm):
    """The fake provider, answering ``PROVIDER_LATENCY_S`` after it has recorded a request, and
    noting when each request arrived (``time.monotonic()``)."""

    arrivals: list[float] = field(default_factory=list)
    in_flight: int = 0  # requests recorded and not answered yet
    busy: asyncio.Event = field(default_factory=asyncio.Event)  # set while in_flight > 0

    async def _record(self, request: web.Request) -> dict[str, Any] | web.Response:
        body = await super()._record(request)
        self.arrivals.append(time.monotonic())
        self.in_flight += 1
        self.busy.set()
        try:
            await asyncio.sleep(PROVIDER_LATENCY_S)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.busy.clear()
        return body


@dataclass
class Rig:
    urls: list[str]
    admin_headers: dict[str, str]
    credential: str
    provider: SlowFakeLlm
    redis: RedisServer
    logs: list[Path]
    audit_dir: Path

    def client(self, broker: int) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.urls[broker]}/v1",
            api_key=self.credential,
            max_retries=0,
            http_client=httpx.AsyncClient(trust_env=False, timeout=10),
        )

    def ledger(self) -> dict[str, Any]:
        """The reservations and the agent's counters, straight from Redis."""
        base = f"{KEY_PREFIX}:{{budget}}"
        with redis.Redis(host="127.0.0.1", port=self.redis.port, socket_timeout=5) as r:
            counters = {
                key.decode(): {k.decode(): int(v) for k, v in r.hgetall(key).items()}
                for key in r.scan_iter(match=f"{base}:w:*:agent:{AGENT}")
            }
            return {
                "rsv": {k.decode(): v.decode() for k, v in r.hgetall(f"{base}:rsv").items()},
                "rsv_exp": r.zcard(f"{base}:rsv:exp"),
                "counters": counters,
            }

    def used_in_redis(self) -> int:
        return sum(c.get("used:calls", 0) for c in self.ledger()["counters"].values())

    def refusals_since(self, wall_s: float) -> list[str]:
        """What the brokers' audit logs say about the 503s they answered since ``wall_s``."""
        found = []
        for path in sorted(self.audit_dir.glob("audit*/*.jsonl")):
            for line in audit_text(path, errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("status") == 503 and record["ts_us"] / 1e6 > wall_s:
                        found.append(
                            f"{path.parent.name} +{record['ts_us'] / 1e6 - wall_s:.2f}s "
                            f"caller={record.get('caller')!r} {record['detail']}"
                        )
        return found

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in self.logs
        )

    def broker_warnings(self, needle: str) -> int:
        return sum(p.read_text(errors="replace").count(needle) for p in self.logs)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = RedisServer(data_dir=tmp_path / "redis")  # persistent: it reloads after SIGKILL
    provider = SlowFakeLlm()
    try:
        with all_stopped([store]), all_stopped([]) as brokers:
            await asyncio.to_thread(store.start)
            await provider.start()
            fake_url = provider.url.removesuffix("/v1")
            key_file = await asyncio.to_thread(generate_signing_key, tmp_path / "broker-key.pem")
            admin = secrets.token_urlsafe(16)
            ports = [free_port() for _ in range(BROKERS)]
            # The same public URL for both, as behind one load balancer.
            config = _config(store.url, local_url(ports[0]), key_file, fake_url)
            env = {PROVIDER_KEY_ENV: PROVIDER_KEY}
            for i, port in enumerate(ports):
                replica = config.copy(port=port).set("audit", dir=tmp_path / f"audit{i}")
                name = f"restart-broker{i}"
                brokers.append(
                    launch_broker(replica, log_dir=tmp_path, name=name, admin_token=admin, env=env)
                )
            for broker in brokers:
                await asyncio.to_thread(broker.wait_ready)
            credential = await asyncio.to_thread(
                brokers[1].register, AGENT, _static_card(AGENT, closed_url())
            )
            assert store.log is not None
            yield Rig(
                [b.url for b in brokers],
                brokers[0].admin_headers,
                credential,
                provider,
                store,
                [b.log for b in brokers] + [store.log],
                tmp_path,
            )
    finally:
        await provider.stop()


# --- helpers -------------------------------------------------------------------------------


async def _budget(rig: Rig, broker: int = 0) -> dict[str, Any]:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        response = await http.get(
            f"{rig.urls[broker]}/admin/budgets", params={"agent": AGENT}, headers=rig.admin_headers
        )
    assert response.status_code == 200, response.text
    [budget] = response.json()["budgets"]
    return dict(budget)


async def _quiet(rig: Rig, within_s: float) -> dict[str, Any]:
    """The agent's budget once nothing is reserved (bounded wait; the last one read if not)."""
    deadline = time.monotonic() + within_s
    while True:
        budget = await _budget(rig)
        ledger = rig.ledger()
        if budget["reserved"] == 0 and not ledger["rsv"] and ledger["rsv_exp"] == 0:
            return budget
        if time.monotonic() > deadline:
            return budget
        await asyncio.sleep(0.1)


@dataclass(frozen=True)
class Call:
    seq: int
    started: float
    ended: float
    outcome: str


@dataclass
class Crash:
    calls: list[Call]
    killed: float  # time.monotonic() right after the redis-server was reaped
    restarting: float  # ... right before it was started again
    restarted: float  # ... once the restarted server answered PING
    restarted_wall: float  # ... the same, time.time()
    used_before_kill: int  # the agent's used calls shortly before the kill (read in Redis)
    used_after_restart: int  # ... read right after the restart
    at_provider: int  # calls the provider was answering when the redis-server was killed


@contextlib.asynccontextmanager
async def _clients(rig: Rig) -> AsyncIterator[list[openai.AsyncOpenAI]]:
    clients = [rig.client(i) for i in range(BROKERS)]
    try:
        yield clients
    finally:
        for client in clients:
            await client.close()


async def _load_through_a_crash(rig: Rig, marker: str) -> Crash:
    """WORKERS loops of calls over both brokers; the redis-server is SIGKILLed BEFORE_S in,
    restarted DOWN_S later, and the loops run AFTER_S more."""
    calls: list[Call] = []
    seq = itertools.count()
    stop = asyncio.Event()
    async with _clients(rig) as clients:

        async def worker() -> None:
            while not stop.is_set():
                n = next(seq)
                started = time.monotonic()
                text = f"{marker} #{n}"
                outcome = await _call(clients[n % BROKERS], MODEL, text, stream=n % 4 == 3)
                calls.append(Call(n, started, time.monotonic(), outcome))
                await asyncio.sleep(PAUSE_S)

        tasks = [asyncio.create_task(worker()) for _ in range(WORKERS)]
        try:
            await asyncio.sleep(BEFORE_S - 0.1)
            used_before = rig.used_in_redis()
            await asyncio.sleep(0.1)
            # Mid-load means calls at the provider (with a real one, there always are): kill
            # while one is there, so its broker must settle it after the crash.
            await asyncio.wait_for(rig.provider.busy.wait(), timeout=2)
            at_provider = rig.provider.in_flight
            await asyncio.to_thread(rig.redis.kill)
            killed = time.monotonic()
            await asyncio.sleep(DOWN_S)
            restarting = time.monotonic()
            await asyncio.to_thread(rig.redis.start)
            restarted, restarted_wall = time.monotonic(), time.time()
            used_after = rig.used_in_redis()
            await asyncio.sleep(AFTER_S)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)
    return Crash(
        calls, killed, restarting, restarted, restarted_wall, used_before, used_after, at_provider
    )


# --- the test ------------------------------------------------------------------------------


def _check_the_outage(rig: Rig, crash: Crash) -> None:
    """While Redis was down the brokers refused (503) and the provider got nothing."""
    calls, killed = crash.calls, crash.killed
    counts = Counter(c.outcome for c in calls)
    context = f"{counts}\n{rig.log_tails()}"
    # Every call got an answer from a broker: served, or refused with a retryable 503.
    assert set(counts) <= {"ok", "503:service_unavailable"}, context
    assert any(c.outcome == "ok" and c.ended < killed for c in calls), context
    down = [c for c in calls if c.started > killed and c.ended < crash.restarting]
    assert down, f"no call was made while Redis was down: {context}"
    served_while_down = [c for c in down if c.outcome == "ok"]
    assert not served_while_down, f"answered while Redis was down: {served_while_down}"
    assert any(c.outcome != "ok" for c in down), context
    arrivals = rig.provider.arrivals
    unmetered = [t - killed for t in arrivals if killed + PROVIDER_SLACK_S < t < crash.restarting]
    assert not unmetered, f"the provider was called while Redis was down, at +{unmetered} s"
    assert crash.at_provider, "no call was at the provider when Redis was killed"
    # The restarted server kept what it had acknowledged.
    assert crash.used_after_restart >= crash.used_before_kill, crash


def _recovery_problems(crash: Crash) -> list[str]:
    """The same brokers serve again once Redis is back: every call started RECOVERY_GRACE_S
    after the restart succeeds."""
    recovered = [c for c in crash.calls if c.started > crash.restarted + RECOVERY_GRACE_S]
    if len(recovered) < WORKERS:
        return [f"only {len(recovered)} calls were made after the recovery"]
    refused = [
        f"#{c.seq} started {c.started - crash.restarted:+.2f}s after the restart: {c.outcome}"
        for c in recovered
        if c.outcome != "ok"
    ]
    if refused:
        return [f"refused after Redis was back ({len(recovered)} calls): {refused}"]
    return []


async def test_redis_killed_and_restarted_mid_load_keeps_the_budget_exact(rig: Rig) -> None:
    marker = f"restart-{secrets.token_hex(6)}"
    began = time.monotonic()
    before = await _budget(rig)
    assert (before["limit"], before["used"], before["reserved"]) == (LIMIT, 0, 0), before

    crash = await _load_through_a_crash(rig, marker)
    _check_the_outage(rig, crash)
    problems = _recovery_problems(crash)  # reported with the rest, at the end

    # After the reservations' ttl nothing stays held (lost settles, releases and reserve
    # replies included), and what is used and what remains add up.
    quiet = await _quiet(rig, within_s=RESERVATION_TTL_S + 3)
    ledger = rig.ledger()
    assert quiet["reserved"] == 0, (quiet, ledger)
    assert not ledger["rsv"] and ledger["rsv_exp"] == 0, ledger
    assert quiet["remaining"] == LIMIT - quiet["used"], quiet
    answered = sum(c.outcome == "ok" for c in crash.calls)
    assert len(rig.provider.recorded) == answered, (len(rig.provider.recorded), answered)

    # Drive the agent to its limit: what remains fits exactly, then every call is refused.
    remaining = quiet["remaining"]
    async with _clients(rig) as clients:
        burst_at = time.monotonic() - crash.restarted
        burst = await asyncio.wait_for(
            asyncio.gather(
                *(
                    _call(clients[i % BROKERS], MODEL, f"{marker} burst {i}", stream=i % 4 == 3)
                    for i in range(remaining + 10)
                )
            ),
            timeout=15,
        )
    final = await _quiet(rig, within_s=3)
    ledger = rig.ledger()
    if final["window_start"] != before["window_start"]:
        pytest.skip("the day window turned over during the test")  # UTC midnight
    assert {r.authorization for r in rig.provider.recorded} == {f"Bearer {PROVIDER_KEY}"}

    provider_total = len(rig.provider.recorded)
    burst_ok = burst.count("ok")
    lost = rig.broker_warnings("budget settle failed")
    if Counter(burst) != {"ok": remaining, "429:insufficient_quota": 10}:
        problems.append(
            f"{remaining + 10} concurrent calls {burst_at:.1f}s after the restart, with "
            f"{remaining} calls of budget left: expected {remaining} ok and 10 "
            f"429:insufficient_quota, got {dict(Counter(burst))}"
        )
    if (final["used"], final["reserved"], final["remaining"]) != (LIMIT, 0, 0):
        problems.append(f"at the limit: expected used {LIMIT}, nothing reserved; got {final}")
    if ledger["rsv"] or ledger["rsv_exp"]:
        problems.append(f"reservations still held in Redis at the end: {ledger}")
    # No overspend: every call the provider answered was charged, so it saw at most LIMIT.
    if provider_total > LIMIT:
        problems.append(
            f"overspend: the provider answered {provider_total} calls of an agent whose budget "
            f"is {LIMIT} calls/day: {answered} during the load (the ledger charged "
            f"{quiet['used']} of them: {answered - quiet['used']} never charged) and "
            f"{burst_ok} after; the brokers logged {lost} 'budget settle failed' (Redis was "
            f"killed while those calls were at the provider; each reservation was then released "
            f"when its ttl passed, not charged); the budget at the end: {final}"
        )
    if answered + burst_ok != provider_total:
        problems.append(f"clients got {answered + burst_ok} answers, provider {provider_total}")
    timeline = (
        f"killed at +{crash.killed - began:.2f}s with {crash.at_provider} call(s) at the "
        f"provider, back at +{crash.restarted - began:.2f}s; "
        f"load {dict(Counter(c.outcome for c in crash.calls))}; "
        f"test {time.monotonic() - began:.1f}s"
    )
    if problems:
        late = rig.refusals_since(crash.restarted_wall + RECOVERY_GRACE_S)
        problems.append(f"503s the brokers audited after the recovery: {late}")
    assert not problems, "\n".join([*problems, timeline])
    print(
        f"\nredis restart: {len(crash.calls)} calls in the load, {timeline}; used "
        f"{quiet['used']} after the load, {remaining} more fit; {lost} settle(s) lost"
    )
