"""The store fixture every contract suite shares: one backend per parameter.

memory, and Redis in each topology the broker supports: ``redis`` (standalone),
``redis-cluster`` (three masters) and ``redis-sentinel`` (a primary found through a sentinel).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from broker.settings import StoreSettings
from broker.stores.base import StoreBackend, Stores
from broker.stores.factory import open_backend
from testkit.redis_process import REDIS_MODES, RedisMode


@pytest.fixture(params=["memory", *REDIS_MODES])
def store_settings(request: pytest.FixtureRequest) -> StoreSettings:
    if request.param == "memory":
        return StoreSettings(backend="memory")
    make: Callable[[RedisMode], StoreSettings] = request.getfixturevalue("redis_store_settings")
    return make(REDIS_MODES[request.param])


@pytest.fixture
async def backend(store_settings: StoreSettings) -> AsyncIterator[StoreBackend]:
    opened = open_backend(store_settings)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def stores(backend: StoreBackend) -> Stores:
    return backend.stores()
