"""The recent traffic contract (the console's live page), against every backend."""

from __future__ import annotations

from broker.stores.base import StoreBackend


async def test_the_newest_rows_are_kept_newest_first(backend: StoreBackend) -> None:
    traffic = backend.recent_traffic()
    await traffic.add([b"r1", b"r2"], keep=3, ttl_s=60)
    await traffic.add([b"r3", b"r4"], keep=3, ttl_s=60)
    assert await traffic.latest(10) == [b"r4", b"r3", b"r2"]
    assert await traffic.latest(2) == [b"r4", b"r3"]
    await traffic.add([], keep=3, ttl_s=60)
    assert await traffic.latest(10) == [b"r4", b"r3", b"r2"]
