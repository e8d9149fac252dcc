"""Live budget limits on Redis, under the budget hash tag (the same cluster slot as the ledger).

- ``<prefix>:{budget}:limits``: hash, scope key -> JSON list of ``{"metric","window","limit"}``
- ``<prefix>:{budget}:limits:ver``: integer, incremented by every ``put`` and ``delete`` in the
  same MULTI transaction, so a replica reads one small key to learn whether anything changed.
"""

from __future__ import annotations

import msgspec

from broker.budgets.model import Limit
from broker.stores.budget_limits import BudgetLimitStore, check_override
from broker.stores.redis_budget import budget_base_key
from broker.stores.redis_client import RedisClient, unavailable_on_error

_limits_decoder = msgspec.json.Decoder(tuple[Limit, ...])
_encoder = msgspec.json.Encoder()


class RedisBudgetLimitStore(BudgetLimitStore):
    """Overrides in one Redis hash, changed in MULTI transactions with the version counter.

    Same contract as ``BudgetLimitStore``; every method raises ``StoreUnavailableError`` if Redis
    fails (a ``put`` or ``delete`` whose reply was lost may have taken effect).
    """

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self._hash = f"{budget_base_key(prefix)}:limits"
        self._version_key = f"{self._hash}:ver"

    @unavailable_on_error
    async def put(self, scope_key: str, limits: tuple[Limit, ...]) -> None:
        check_override(scope_key, limits)
        async with self._client.pipeline(transaction=True) as tx:
            tx.hset(self._hash, scope_key, _encoder.encode(tuple(limits)))
            tx.incr(self._version_key)
            await tx.execute()

    @unavailable_on_error
    async def delete(self, scope_key: str) -> bool:
        async with self._client.pipeline(transaction=True) as tx:
            tx.hdel(self._hash, scope_key)
            tx.incr(self._version_key)
            removed, _ = await tx.execute()
        return bool(removed)

    @unavailable_on_error
    async def all(self) -> dict[str, tuple[Limit, ...]]:
        raw = await self._client.hgetall(self._hash)
        decoded = ((_text(key), _limits_decoder.decode(value)) for key, value in raw.items())
        return dict(sorted(decoded))

    @unavailable_on_error
    async def version(self) -> int:
        raw = await self._client.get(self._version_key)
        return 0 if raw is None else int(raw)


def _text(part: bytes | str) -> str:
    return part.decode() if isinstance(part, bytes) else part
