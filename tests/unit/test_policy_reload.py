"""Policy reload: edits apply within the poll interval, on every replica; broken files never."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

from broker.policy import PolicyEngine, PolicyError, PolicyMessage, PolicyReloader, policy_version
from broker.settings import StoreSettings
from broker.stores.redis_client import RedisClient, open_redis
from testkit.redis_process import REDIS_MODES, RedisMode

MODEL = (Path(__file__).resolve().parents[2] / "policies" / "model.conf").read_text()
V1 = "g, alice, role:user\np, role:user, svc, SendMessage:*, allow\n"
V2 = "g, alice, role:user\np, role:user, svc, SendMessage:*, deny\n"
BROKEN = "g, alice, role:user\np, role:user, svc, SendMessage:*, allow, oops\n"
INTERVAL_S = 0.05


async def eventually(check: Callable[[], bool], within_s: float = 2.0) -> None:
    """Wait until ``check()`` holds; the reloader works in the background, so this polls."""
    async with asyncio.timeout(within_s):
        while not check():  # noqa: ASYNC110 - nothing to wait on but the engine's state
            await asyncio.sleep(0.01)


async def write(path: Path, text: str) -> None:
    await asyncio.to_thread(path.write_text, text)


def started_engine(path: Path) -> PolicyEngine:
    engine = PolicyEngine(MODEL)
    engine.swap(engine.load_text(path.read_text(), str(path)))
    return engine


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.csv"
    path.write_text(V1)
    return path


@pytest.fixture(params=list(REDIS_MODES))
async def redis_client(
    request: pytest.FixtureRequest, redis_store_settings: Callable[[RedisMode], StoreSettings]
) -> AsyncIterator[RedisClient]:
    """A client of each topology: the policy channel is the same on standalone, cluster and
    Sentinel."""
    client = open_redis(redis_store_settings(REDIS_MODES[request.param]))
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def channel() -> str:
    return f"test-policy-{uuid.uuid4().hex}"


async def test_an_edit_is_applied_within_the_interval(policy_file: Path) -> None:
    engine = started_engine(policy_file)
    async with PolicyReloader(engine, policy_file, interval_s=INTERVAL_S):
        await asyncio.sleep(2 * INTERVAL_S)
        assert engine.decide_chain(["alice"], "svc", "SendMessage:").allowed
        await write(policy_file, V2)
        await eventually(lambda: engine.version == policy_version(V2))
        # The question asked before the edit was answered again under V2 before the swap.
        assert engine.cached_answers == 1
        assert engine.decide_chain(["alice"], "svc", "SendMessage:").reason == "explicit_deny"
        assert engine.cached_answers == 1


async def test_an_edit_that_keeps_size_and_mtime_is_still_seen(policy_file: Path) -> None:
    engine = started_engine(policy_file)
    async with PolicyReloader(engine, policy_file, interval_s=INTERVAL_S):
        await asyncio.sleep(2 * INTERVAL_S)
        stat = await asyncio.to_thread(policy_file.stat)
        edited = V1.replace("alice", "bobby")
        await write(policy_file, edited)
        os.utime(policy_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same tick, same size
        await eventually(lambda: engine.version == policy_version(edited))


async def test_a_broken_edit_keeps_the_last_good_policy(policy_file: Path) -> None:
    engine = started_engine(policy_file)
    errors: list[PolicyError] = []
    async with PolicyReloader(engine, policy_file, interval_s=INTERVAL_S, on_error=errors.append):
        await write(policy_file, BROKEN)
        await eventually(lambda: bool(errors))
        await asyncio.sleep(5 * INTERVAL_S)
        assert len(errors) == 1  # reported once, not on every poll
        assert (errors[0].file, errors[0].line) == (str(policy_file), 2)
        assert engine.version == policy_version(V1)
        assert engine.decide_chain(["alice"], "svc", "SendMessage:").allowed

        await write(policy_file, V2)  # fixed: applied as usual
        await eventually(lambda: engine.version == policy_version(V2))


async def test_an_async_error_callback_is_awaited(policy_file: Path) -> None:
    engine = started_engine(policy_file)
    seen: list[str] = []

    async def audit(error: PolicyError) -> None:
        await asyncio.sleep(0)
        seen.append(str(error))

    async with PolicyReloader(engine, policy_file, interval_s=INTERVAL_S, on_error=audit):
        await asyncio.to_thread(policy_file.unlink)
        await eventually(lambda: bool(seen))
    assert seen[0].startswith(f"{policy_file}: cannot read")
    assert engine.version == policy_version(V1)


async def test_reload_now(policy_file: Path) -> None:
    engine = started_engine(policy_file)
    errors: list[PolicyError] = []
    reloader = PolicyReloader(engine, policy_file, interval_s=3600, on_error=errors.append)
    await write(policy_file, V2)
    assert (await reloader.reload_now()).version == policy_version(V2)
    assert engine.version == policy_version(V2)
    await write(policy_file, BROKEN)
    for _ in range(2):  # the admin hears about it every time it asks
        with pytest.raises(PolicyError, match="not 5"):
            await reloader.reload_now()
    assert len(errors) == 2
    assert engine.version == policy_version(V2)


async def test_stop_leaves_no_task_behind(policy_file: Path) -> None:
    reloader = PolicyReloader(started_engine(policy_file), policy_file, interval_s=INTERVAL_S)
    before = asyncio.all_tasks()
    await reloader.start()
    assert len(asyncio.all_tasks() - before) == 1
    await reloader.stop()
    assert asyncio.all_tasks() - before == set()


# --- replicas, through Redis -------------------------------------------------------------------


async def test_an_edit_on_one_replica_reaches_the_other(
    tmp_path: Path, redis_client: RedisClient, channel: str
) -> None:
    files = [tmp_path / "a.csv", tmp_path / "b.csv"]
    for path in files:
        await write(path, V1)
    engines = [started_engine(path) for path in files]
    first, second = (
        PolicyReloader(engine, path, interval_s=INTERVAL_S, redis=redis_client, channel=channel)
        for engine, path in zip(engines, files, strict=True)
    )
    async with first, second:
        await write(files[0], V2)
        await eventually(lambda: engines[1].version == policy_version(V2))
        assert engines[1].decide_chain(["alice"], "svc", "SendMessage:").reason == "explicit_deny"
        # The second replica's own file did not change, so nothing flips back.
        await asyncio.sleep(5 * INTERVAL_S)
        assert [e.version for e in engines] == [policy_version(V2)] * 2
    assert await asyncio.to_thread(files[1].read_text) == V1


async def test_a_replica_never_applies_an_invalid_text(
    policy_file: Path, redis_client: RedisClient, channel: str
) -> None:
    engine = started_engine(policy_file)
    errors: list[PolicyError] = []
    reloader = PolicyReloader(
        engine, policy_file, interval_s=INTERVAL_S, on_error=errors.append,
        redis=redis_client, channel=channel,
    )  # fmt: skip
    encode = msgspec.json.encode
    async with reloader:
        await redis_client.publish(channel, b"not json")
        await redis_client.publish(channel, encode({"version": "0" * 64, "text": V2}))
        await redis_client.publish(
            channel, encode(PolicyMessage(version=policy_version(BROKEN), text=BROKEN))
        )
        await eventually(lambda: bool(errors))
        assert (errors[0].file, errors[0].line) == (f"redis:{channel}", 2)
        assert engine.version == policy_version(V1)
        # A valid text that matches its version is applied.
        await redis_client.publish(
            channel, encode(PolicyMessage(version=policy_version(V2), text=V2))
        )
        await eventually(lambda: engine.version == policy_version(V2))
    assert len(errors) == 1


async def test_a_policy_received_just_after_start_is_not_undone_by_the_unchanged_file(
    policy_file: Path, redis_client: RedisClient, channel: str
) -> None:
    engine = started_engine(policy_file)
    reloader = PolicyReloader(engine, policy_file, interval_s=INTERVAL_S, redis=redis_client,
                              channel=channel)  # fmt: skip
    async with reloader:
        message = PolicyMessage(version=policy_version(V2), text=V2)
        await redis_client.publish(channel, msgspec.json.encode(message))
        await eventually(lambda: engine.version == policy_version(V2))
        # The file did not change: its first polls must not put V1 back.
        await asyncio.sleep(5 * INTERVAL_S)
        assert engine.version == policy_version(V2)
