"""The production backend: state in Redis, shared by any number of broker replicas.

Each operation is one Redis command, or one Lua script (the ``.lua`` files beside this module)
where it must read before it writes; nothing is read, checked and written across round trips.
Keys touched by one script share a hash tag, so the scripts also run on Redis Cluster:

- ``<prefix>:{reg}:agents``: hash, agent name -> AgentRecord JSON
- ``<prefix>:{cred}:digests``: hash, credential digest -> agent name
- ``<prefix>:{cred}:agent:<name>``: set of the agent's digests
- ``<prefix>:route:{<len(agent)>:<agent>:<task_id>}``: TaskRoute JSON with a TTL (the length
  keeps agent "a:b" + task "c" apart from agent "a" + task "b:c")

Every Redis failure surfaces as ``StoreUnavailableError``, translated in ``_unavailable_on_error``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from importlib import resources
from typing import Any, ParamSpec, TypeVar

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from broker.errors import StoreUnavailableError
from broker.settings import StoreSettings
from broker.stores.base import (
    AgentRecord,
    AgentRegistry,
    AgentStatus,
    CredentialStore,
    StoreBackend,
    Stores,
    TaskRoute,
    TaskRouteStore,
)

# A dead Redis must fail a request fast (the broker then refuses with a retryable error) rather
# than hold it for the OS's TCP timeouts.
SOCKET_TIMEOUT_S = 2.0
# PING a connection that sat idle this long before using it, so one broken while idle is replaced.
HEALTH_CHECK_INTERVAL_S = 15
MAX_CONNECTIONS = 128
# How long a request waits for a free pooled connection before the store counts as unavailable.
POOL_WAIT_S = 2.0

_ENCODER = msgspec.json.Encoder()
_AGENT_DECODER = msgspec.json.Decoder(AgentRecord)
_ROUTE_DECODER = msgspec.json.Decoder(TaskRoute)

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _lua(name: str) -> str:
    return resources.files("broker.stores").joinpath(name).read_text(encoding="utf-8")


_SET_STATUS_LUA = _lua("registry_set_status.lua")
_CREDENTIALS_REPLACE_LUA = _lua("credentials_replace.lua")
_ROUTE_CLAIM_LUA = _lua("task_route_claim.lua")


def _unavailable_on_error(
    method: Callable[_P, Awaitable[_T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """The one place a Redis failure becomes ``StoreUnavailableError``; its text goes to detail."""

    @functools.wraps(method)
    async def translated(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await method(*args, **kwargs)
        except RedisError as exc:
            raise StoreUnavailableError(detail=f"{type(exc).__name__}: {exc}") from exc

    return translated


class RedisAgentRegistry(AgentRegistry):
    """Agents in one Redis hash. Same contract as ``AgentRegistry``.

    Every method raises ``StoreUnavailableError`` if Redis cannot be reached or fails.
    """

    def __init__(self, client: Redis, set_status_script: AsyncScript, prefix: str) -> None:
        self._client = client
        self._set_status = set_status_script
        self._key = f"{prefix}:{{reg}}:agents"

    @_unavailable_on_error
    async def create(self, record: AgentRecord) -> bool:
        # HSETNX is create-if-absent in one command.
        return bool(await self._client.hsetnx(self._key, record.name, _ENCODER.encode(record)))

    @_unavailable_on_error
    async def put(self, record: AgentRecord) -> None:
        await self._client.hset(self._key, record.name, _ENCODER.encode(record))

    @_unavailable_on_error
    async def get(self, name: str) -> AgentRecord | None:
        raw = await self._client.hget(self._key, name)
        return None if raw is None else _AGENT_DECODER.decode(raw)

    @_unavailable_on_error
    async def list(self) -> list[AgentRecord]:
        raws = await self._client.hvals(self._key)
        records = [_AGENT_DECODER.decode(raw) for raw in raws]
        # Sorted here, not by Redis, so the order is Python's str order in every backend.
        return sorted(records, key=lambda record: record.name)

    @_unavailable_on_error
    async def delete(self, name: str) -> bool:
        return bool(await self._client.hdel(self._key, name))

    @_unavailable_on_error
    async def set_status(self, name: str, status: AgentStatus, now: float) -> AgentRecord | None:
        raw = await self._set_status(keys=[self._key], args=[name, status, repr(float(now))])
        return None if raw is None else _AGENT_DECODER.decode(raw)


class RedisCredentialStore(CredentialStore):
    """Credential digests in a Redis hash, indexed per agent. Same contract as ``CredentialStore``.

    A digest handed to a second agent authenticates only the second from then on; revoking the
    first agent leaves it alone. Every method raises ``StoreUnavailableError`` if Redis fails.
    """

    def __init__(self, client: Redis, replace_script: AsyncScript, prefix: str) -> None:
        self._client = client
        self._replace = replace_script
        self._prefix = prefix
        self._index_key = f"{prefix}:{{cred}}:digests"

    @_unavailable_on_error
    async def replace(self, agent: str, digest: str) -> None:
        await self._replace(keys=[self._index_key, self._agent_key(agent)], args=[agent, digest])

    @_unavailable_on_error
    async def lookup(self, digest: str) -> str | None:
        agent = await self._client.hget(self._index_key, digest)
        # The client returns bytes (decode_responses is off, so records decode without a copy).
        return agent.decode() if isinstance(agent, bytes) else agent

    @_unavailable_on_error
    async def revoke_agent(self, agent: str) -> int:
        # The replace script without a new digest only revokes.
        revoked = await self._replace(keys=[self._index_key, self._agent_key(agent)], args=[agent])
        return int(revoked)

    def _agent_key(self, agent: str) -> str:
        return f"{self._prefix}:{{cred}}:agent:{agent}"


class RedisTaskRouteStore(TaskRouteStore):
    """Task routes as Redis keys with a TTL. Same contract as ``TaskRouteStore``.

    ``claim`` raises ValueError if ``ttl_s`` is not positive. Every method raises
    ``StoreUnavailableError`` if Redis fails.
    """

    def __init__(self, client: Redis, claim_script: AsyncScript, prefix: str) -> None:
        self._client = client
        self._claim = claim_script
        self._prefix = prefix

    @_unavailable_on_error
    async def claim(self, route: TaskRoute, ttl_s: int) -> bool:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        key = self._key(route.agent, route.task_id)
        claimed = await self._claim(keys=[key], args=[_ENCODER.encode(route), route.owner, ttl_s])
        return bool(claimed)

    @_unavailable_on_error
    async def get(self, agent: str, task_id: str) -> TaskRoute | None:
        raw = await self._client.get(self._key(agent, task_id))
        return None if raw is None else _ROUTE_DECODER.decode(raw)

    def _key(self, agent: str, task_id: str) -> str:
        return f"{self._prefix}:route:{{{len(agent)}:{agent}:{task_id}}}"


class RedisBackend(StoreBackend):
    """The Redis stores over one connection pool to ``settings.redis_url``.

    Connecting is lazy: constructing never fails on an unreachable server; ``ping`` and every
    store method raise ``StoreUnavailableError`` while Redis is down, and work again, without a
    restart, once it is back. Raises ValueError if ``key_prefix`` holds a brace, which would
    break the hash tags.
    """

    def __init__(self, settings: StoreSettings) -> None:
        prefix = settings.key_prefix
        if "{" in prefix or "}" in prefix:
            raise ValueError("store key_prefix must not contain '{' or '}'")
        self._client = Redis.from_pool(_connection_pool(settings.redis_url))
        self._stores = Stores(
            registry=RedisAgentRegistry(
                self._client, self._client.register_script(_SET_STATUS_LUA), prefix
            ),
            credentials=RedisCredentialStore(
                self._client, self._client.register_script(_CREDENTIALS_REPLACE_LUA), prefix
            ),
            task_routes=RedisTaskRouteStore(
                self._client, self._client.register_script(_ROUTE_CLAIM_LUA), prefix
            ),
        )

    def stores(self) -> Stores:
        return self._stores

    @_unavailable_on_error
    async def ping(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()


def _connection_pool(url: str) -> BlockingConnectionPool:
    return BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_WAIT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        # No silent retries: create, delete and revoke report what they changed, and a replay
        # after a lost reply would misreport it. The caller gets a retryable error instead;
        # reconnecting is still automatic, as the pool replaces broken connections.
        retry=Retry(NoBackoff(), 0),
    )
