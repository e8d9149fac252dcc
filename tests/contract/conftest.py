"""The store fixture every contract suite shares: one backend per parameter, memory and redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from broker.settings import StoreSettings
from broker.stores.base import StoreBackend, Stores
from broker.stores.factory import open_backend


@pytest.fixture(params=["memory", "redis"])
def store_settings(request: pytest.FixtureRequest) -> StoreSettings:
    if request.param == "memory":
        return StoreSettings(backend="memory")
    return StoreSettings(
        backend="redis",
        redis_url=request.getfixturevalue("redis_url"),
        key_prefix=request.getfixturevalue("redis_key_prefix"),
    )


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
