"""The broker's background tasks live in one owner: the runtime's shutdown ends every one of
them, and one that crashes is logged in one line without taking the others (or the broker) down
(docs/decisions/0027). Real parts: a runtime on a real Redis with a policy file, the file audit
log, its witness and a SIEM exporter, so every long-lived task it starts is running."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from broker.background import BackgroundTasks
from broker.errors import StoreUnavailableError
from broker.runtime import BrokerRuntime
from broker.settings import load_settings
from testkit.config import BrokerConfig
from testkit.procs import free_port

POLICY = "g, alice, role:user\np, role:user, *, originate, allow\n"


def _settings(tmp_path: Path, redis_url: str, key_prefix: str) -> object:
    (tmp_path / "policy.csv").write_text(POLICY)
    config = (
        BrokerConfig(port=free_port())
        .use_redis(redis_url, key_prefix=key_prefix)
        .use_policy_file(tmp_path / "policy.csv", reload_interval_s=0.05)
        .set(
            "audit",
            dir=tmp_path / "audit",
            replica="unit",
            fsync=False,
            witness="file",
            witness_dir=tmp_path / "witness",
            checkpoint_interval_s=0.05,
        )
        .set(
            "audit.export",
            enabled=True,
            poll_interval_s=0.05,
            positions_path=tmp_path / "positions.json",
            sinks=[{"name": "siem", "kind": "jsonl", "path": str(tmp_path / "siem.jsonl")}],
        )
        .set("budgets", expire_interval_s=0.05)
    )
    return load_settings(str(config.write(tmp_path / "broker.toml")), environ={})


async def test_the_runtime_shutdown_leaves_no_task_of_its_own_running(
    tmp_path: Path, redis_url: str, redis_key_prefix: str
) -> None:
    before = asyncio.all_tasks()
    runtime = await BrokerRuntime.start(_settings(tmp_path, redis_url, redis_key_prefix))  # type: ignore[arg-type]
    try:
        runtime.audit.record_soon({"kind": "test", "caller": "unit", "detail": {}})

        async def never_lands() -> None:
            raise StoreUnavailableError(detail="down")

        runtime.late_writes.add(never_lands, until=time.time() + 60, what="test write")
        forgotten = runtime.tasks.spawn(asyncio.sleep(3600), "a part that never stops it")
        await asyncio.sleep(0.2)  # polls, checkpoints, export passes, the late-write retries
        names = {task.get_name() for task in asyncio.all_tasks() - before}
        for expected in ("budget-expiry", "policy-poll", "kill-switch-poll", "late-writes",
                         "audit-ckpt", "audit-export:siem", "audit-commit"):  # fmt: skip
            assert expected in names
        assert any(name.startswith("channel-") for name in names)
        assert len(runtime.tasks) >= 9  # the two channels too: each spawned into the one owner
    finally:
        await runtime.close()
    left = {task for task in asyncio.all_tasks() - before if not task.done()}
    assert left == set(), sorted(task.get_name() for task in left)
    assert forgotten.cancelled()  # what no part ended, the one owner did
    assert len(runtime.tasks) == 0


async def test_a_crashing_background_task_is_logged_once_and_the_rest_keep_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = BackgroundTasks()
    ticks = 0

    async def keeps_running() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    async def crashes() -> None:
        await asyncio.sleep(0)
        raise ValueError("a bug in one background task")

    with caplog.at_level(logging.ERROR, logger="a2a_broker.background"):
        survivor = tasks.spawn(keeps_running(), "survivor")
        crashed = tasks.spawn(crashes(), "crasher")
        await asyncio.wait([crashed])
        seen = ticks
        await asyncio.sleep(0.05)
    assert ticks > seen and not survivor.done()  # the crash did not cancel its neighbour
    assert len(tasks) == 1  # the crashed task is gone from the owner, not left dangling
    lines = [r for r in caplog.records if r.name == "a2a_broker.background"]
    assert [r.getMessage() for r in lines] == [
        "background task crasher crashed: ValueError('a bug in one background task')"
    ]
    assert lines[0].levelno == logging.ERROR
    await tasks.close()
    assert survivor.cancelled() and len(tasks) == 0
    with pytest.raises(RuntimeError, match="closed"):
        tasks.spawn(keeps_running(), "too late")


async def test_a_background_task_that_crashes_does_not_take_the_runtime_down(
    tmp_path: Path, redis_url: str, redis_key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = await BrokerRuntime.start(_settings(tmp_path, redis_url, redis_key_prefix))  # type: ignore[arg-type]
    try:

        async def crashes() -> None:
            raise RuntimeError("boom")

        with caplog.at_level(logging.ERROR, logger="a2a_broker.background"):
            await asyncio.wait([runtime.tasks.spawn(crashes(), "crasher")])
        assert "background task crasher crashed: RuntimeError('boom')" in caplog.messages
        assert not runtime.expiry.done()  # its neighbours run on
        await runtime.audit.event("test", "unit", action="still serving")  # and it still serves
        assert await runtime.controls.kill.lift() is False
    finally:
        await runtime.close()
