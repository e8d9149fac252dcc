"""The latest requests in Redis: one capped list every worker and replica adds to.

``<prefix>:traffic:{traffic}:recent``: newest first, trimmed to ``keep`` and expiring
``ttl_s`` after the last addition, in one script per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.stores.redis_client import RedisClient, unavailable_on_error
from broker.stores.traffic_base import RecentTraffic

_ADD_LUA = """
for i = 3, #ARGV do
  redis.call('LPUSH', KEYS[1], ARGV[i])
end
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[1]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


class RedisRecentTraffic(RecentTraffic):
    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self._add = client.register_script(_ADD_LUA)
        self._key = f"{prefix}:traffic:{{traffic}}:recent"

    @unavailable_on_error
    async def add(self, rows: Sequence[bytes], keep: int, ttl_s: int) -> None:
        if rows:
            await self._add(keys=[self._key], args=[keep, ttl_s, *rows])

    @unavailable_on_error
    async def latest(self, limit: int) -> list[bytes]:
        found = await self._client.lrange(self._key, 0, limit - 1)
        return [row.encode() if isinstance(row, str) else bytes(row) for row in found]
