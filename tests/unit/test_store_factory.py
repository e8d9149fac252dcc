"""open_backend picks the backend the settings name, without connecting to anything."""

from __future__ import annotations

import pytest

from broker.settings import StoreSettings
from broker.stores.factory import open_backend
from broker.stores.memory import MemoryBackend
from broker.stores.redis import RedisBackend


async def test_memory_is_the_default() -> None:
    backend = open_backend(StoreSettings())
    assert isinstance(backend, MemoryBackend)
    await backend.ping()
    await backend.close()


async def test_redis_opens_lazily(unused_tcp_port: int) -> None:
    # Nothing listens on the port: opening must still succeed; only use reports the outage.
    settings = StoreSettings(backend="redis", redis_url=f"redis://127.0.0.1:{unused_tcp_port}/0")
    backend = open_backend(settings)
    assert isinstance(backend, RedisBackend)
    await backend.close()


@pytest.mark.parametrize("prefix", ["a{b", "a}b"])
def test_redis_refuses_a_prefix_that_would_break_hash_tags(prefix: str) -> None:
    with pytest.raises(ValueError, match="key_prefix"):
        open_backend(StoreSettings(backend="redis", key_prefix=prefix))
