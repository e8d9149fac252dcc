"""Export positions: one contract for every PositionStore backend (file, real Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from broker.audit.export import (
    FilePositionStore,
    PositionStore,
    PositionStoreError,
    RedisPositionStore,
)


def names_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


@pytest.fixture(params=["file", "redis"])
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], PositionStore]]:
    opened: list[PositionStore] = []

    def make() -> PositionStore:
        if request.param == "file":
            store: PositionStore = FilePositionStore(tmp_path / "positions.json")
        else:
            url = request.getfixturevalue("redis_url")
            prefix = request.getfixturevalue("redis_key_prefix")
            store = RedisPositionStore(url, f"{prefix}:export")
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.aclose()


async def test_an_unknown_position_is_zero_and_saves_survive_a_new_instance(
    store_factory: Callable[[], PositionStore],
) -> None:
    make = store_factory
    first = make()
    assert await first.load("hec:main", "r1") == 0
    await first.save("hec:main", "r1", 41)
    await first.save("hec:main", "r1", 42)
    await first.save("syslog:siem", "r1", 7)
    await first.save("hec:main", "r2", 3)
    again = make()
    assert await again.load("hec:main", "r1") == 42
    assert await again.load("syslog:siem", "r1") == 7
    assert await again.load("hec:main", "r2") == 3
    assert await again.load("syslog:siem", "r2") == 0


async def test_the_file_store_replaces_atomically_and_refuses_a_corrupt_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "positions.json"
    await FilePositionStore(path).save("s", "r1", 5)
    assert names_in(tmp_path) == ["positions.json"]  # no temporary left
    path.write_bytes(b'{"s": {"r1": 5')  # torn by hand: never silently restart from 0
    with pytest.raises(PositionStoreError):
        await FilePositionStore(path).load("s", "r1")


async def test_a_file_store_that_cannot_write_raises_position_store_error(tmp_path: Path) -> None:
    store = FilePositionStore(tmp_path / "missing" / "positions.json")
    with pytest.raises(PositionStoreError):
        await store.save("s", "r1", 1)


async def test_an_unreachable_redis_raises_position_store_error(unused_tcp_port: int) -> None:
    store = RedisPositionStore(f"redis://127.0.0.1:{unused_tcp_port}/0", "k", timeout_s=0.5)
    try:
        with pytest.raises(PositionStoreError):
            await store.load("s", "r1")
        with pytest.raises(PositionStoreError):
            await store.save("s", "r1", 1)
    finally:
        await store.aclose()
