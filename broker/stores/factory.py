"""Opening the store backend the settings name."""

from __future__ import annotations

from typing import assert_never

from broker.settings import StoreSettings
from broker.stores.base import StoreBackend
from broker.stores.memory import MemoryBackend
from broker.stores.redis import RedisBackend


def open_backend(settings: StoreSettings) -> StoreBackend:
    """The backend ``settings.backend`` names. Does not connect: call ``ping`` to check it."""
    match settings.backend:
        case "memory":
            return MemoryBackend(settings.memory_max_tasks)
        case "redis":
            return RedisBackend(settings)
        case _:
            assert_never(settings.backend)
