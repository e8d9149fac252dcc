"""Alert state in Redis, for every replica (``broker.stores.alert_base``).

One Lua script per operation. Keys of one subject share its hash tag, and the kept alerts
share ``{alerts}``, so each script's keys sit in one Redis Cluster slot:

- ``<prefix>:alert:{…}:edge``: hash, the edge's (or model's) buckets and usual depth
- ``<prefix>:alert:{…}:burst``: a caller's refusals in the current window
- ``<prefix>:alert:{…}:once``: present while an alert of that subject is not to repeat
- ``<prefix>:alert:{…}:cardkeys``: set, the key ids an agent's cards were signed with
- ``<prefix>:alerts:{alerts}:all`` / ``:order`` / ``:acks``: the kept alerts, by time, acks

Every key expires (``ttl_s`` after it was last written). Redis failures surface as
``StoreUnavailableError``.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from broker.stores.alert_base import Alert, AlertState, EdgeFindings, EdgeRules
from broker.stores.redis_client import RedisClient, lua_source, unavailable_on_error

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Alert)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisAlertState(AlertState):
    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._edge = client.register_script(lua_source("alert_edge.lua"))
        self._burst = client.register_script(lua_source("alert_burst.lua"))
        self._card_keys = client.register_script(lua_source("alert_card_keys.lua"))
        self._add = client.register_script(lua_source("alert_add.lua"))
        self._ack = client.register_script(lua_source("alert_ack.lua"))
        self._once = client.register_script(
            "return redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) and 1 or 0"
        )
        kept = f"{prefix}:alerts:{{alerts}}"
        self._kept = [f"{kept}:all", f"{kept}:order", f"{kept}:acks"]

    def _key(self, subject: str, what: str) -> str:
        return f"{self._prefix}:alert:{{{len(subject)}:{subject}}}:{what}"

    @unavailable_on_error
    async def observe_edge(
        self, subject: str, calls: int, depth: int, rules: EdgeRules
    ) -> EdgeFindings:
        args = [calls, depth, rules.bucket_s, rules.smoothing, rules.rate_factor]
        args += [rules.rate_min_calls, rules.rate_warmup_buckets, rules.depth_warmup_calls]
        first, rate, baseline, deeper, usual = await self._edge(
            keys=[self._key(subject, "edge")], args=[*args, rules.ttl_s]
        )
        return EdgeFindings(bool(first), int(rate), float(_text(baseline)), int(deeper), int(usual))

    @unavailable_on_error
    async def count_burst(self, subject: str, amount: int, window_s: int, threshold: int) -> int:
        reached = await self._burst(
            keys=[self._key(subject, "burst")], args=[amount, window_s, threshold]
        )
        return int(reached)

    @unavailable_on_error
    async def once(self, subject: str, ttl_s: int) -> bool:
        return bool(await self._once(keys=[self._key(subject, "once")], args=[ttl_s]))

    @unavailable_on_error
    async def new_card_keys(self, agent: str, kids: Sequence[str], ttl_s: int) -> list[str]:
        new = await self._card_keys(keys=[self._key(agent, "cardkeys")], args=[ttl_s, *kids])
        return [_text(kid) for kid in new]

    @unavailable_on_error
    async def add(self, alert: Alert, keep: int, ttl_s: int) -> None:
        args: list[bytes | str | float] = [alert.id, _ENCODER.encode(alert), alert.at, keep, ttl_s]
        await self._add(keys=self._kept, args=args)

    @unavailable_on_error
    async def recent(self, limit: int) -> list[Alert]:
        found_ids = await self._client.zrevrange(self._kept[1], 0, limit - 1)
        ids = [_text(i) for i in found_ids if isinstance(i, bytes | str)]
        if not ids:
            return []
        bodies = await self._client.hmget(self._kept[0], ids)
        acks = await self._client.hmget(self._kept[2], ids)
        found: list[Alert] = []
        for body, ack in zip(bodies, acks, strict=True):
            if body is None:
                continue
            alert = _DECODER.decode(body)
            if ack is not None:
                at, _, by = _text(ack).partition("|")
                alert = msgspec.structs.replace(alert, acked_at=float(at), acked_by=by)
            found.append(alert)
        return found

    @unavailable_on_error
    async def acknowledge(self, alert_id: str, by: str, at: float) -> bool:
        keys = [self._kept[0], self._kept[2]]
        return bool(await self._ack(keys=keys, args=[alert_id, f"{at}|{by}"]))
