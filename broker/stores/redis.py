"""The production backend: state in Redis, shared by any number of broker replicas.

Each operation is one Redis command, or one Lua script (the ``.lua`` files beside this module)
where it must read before it writes; nothing is read, checked and written across round trips.
Keys touched by one script share a hash tag, so the scripts also run on Redis Cluster:

- ``<prefix>:{reg}:agents``: hash, agent name -> AgentRecord JSON
- ``<prefix>:{cred}:digests``: hash, credential digest -> agent name
- ``<prefix>:{cred}:agent:<name>``: set of the agent's digests
- ``<prefix>:route:{<len(agent)>:<agent>:<task_id>}``: the owning caller's name, with a TTL
  (the length keeps agent "a:b" + task "c" apart from agent "a" + task "b:c"); routes written
  by earlier versions hold TaskRoute JSON and are still read
- ``<prefix>:dlg:{<len(tree)>:<tree>}:…`` and ``<prefix>:revoked:<jti>``: delegation counters,
  revocations and task trees, laid out in ``redis_delegation``
- ``<prefix>:{budget}:…`` and ``<prefix>:rl:{…}``: budgets and rate limits, laid out in
  ``redis_budget``
- ``<prefix>:killswitch``: the global kill switch's state, see ``kill_switch``
- ``<prefix>:{mcp}:servers``: MCP servers registered at run time, see ``mcp_servers``

Every Redis failure surfaces as ``StoreUnavailableError``, translated in
``redis_client.unavailable_on_error``; the pool settings live there too.
"""

from __future__ import annotations

import asyncio

import msgspec
from redis.commands.core import AsyncScript

from broker.settings import StoreSettings
from broker.stores.alert_base import AlertState
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
from broker.stores.kill_switch import RedisKillSwitchStore
from broker.stores.mcp_servers import RedisMcpServerStore
from broker.stores.redis_alerts import RedisAlertState
from broker.stores.redis_approvals import RedisApprovalStore
from broker.stores.redis_batch import BatchingRedis, BatchingRedisCluster
from broker.stores.redis_budget import RedisBudgetLedger, RedisRateLimiter
from broker.stores.redis_budget_limits import RedisBudgetLimitStore
from broker.stores.redis_client import (
    RedisClient,
    lua_source,
    open_redis,
    unavailable_on_error,
)
from broker.stores.redis_delegation import (
    RedisDelegationCounters,
    RedisRevocations,
    RedisTaskTreeIndex,
)
from broker.stores.redis_topology import check_redis
from broker.stores.redis_traffic import RedisRecentTraffic
from broker.stores.traffic_base import RecentTraffic

_ENCODER = msgspec.json.Encoder()
_AGENT_DECODER = msgspec.json.Decoder(AgentRecord)
_ROUTE_DECODER = msgspec.json.Decoder(TaskRoute)

_SET_STATUS_LUA = lua_source("registry_set_status.lua")
_CREDENTIALS_REPLACE_LUA = lua_source("credentials_replace.lua")
_ROUTE_CLAIM_LUA = lua_source("task_route_claim.lua")


class RedisAgentRegistry(AgentRegistry):
    """Agents in one Redis hash. Same contract as ``AgentRegistry``.

    Every method raises ``StoreUnavailableError`` if Redis cannot be reached or fails.
    """

    def __init__(self, client: RedisClient, set_status_script: AsyncScript, prefix: str) -> None:
        self._client = client
        self._set_status = set_status_script
        self._key = f"{prefix}:{{reg}}:agents"

    @unavailable_on_error
    async def create(self, record: AgentRecord) -> bool:
        # HSETNX is create-if-absent in one command.
        return bool(await self._client.hsetnx(self._key, record.name, _ENCODER.encode(record)))

    @unavailable_on_error
    async def put(self, record: AgentRecord) -> None:
        await self._client.hset(self._key, record.name, _ENCODER.encode(record))

    @unavailable_on_error
    async def get(self, name: str) -> AgentRecord | None:
        raw = await self._client.hget(self._key, name)
        return None if raw is None else _AGENT_DECODER.decode(raw)

    @unavailable_on_error
    async def list(self) -> list[AgentRecord]:
        raws = await self._client.hvals(self._key)
        records = [_AGENT_DECODER.decode(raw) for raw in raws]
        # Sorted here, not by Redis, so the order is Python's str order in every backend.
        return sorted(records, key=lambda record: record.name)

    @unavailable_on_error
    async def delete(self, name: str) -> bool:
        return bool(await self._client.hdel(self._key, name))

    @unavailable_on_error
    async def set_status(self, name: str, status: AgentStatus, now: float) -> AgentRecord | None:
        raw = await self._set_status(keys=[self._key], args=[name, status, repr(float(now))])
        return None if raw is None else _AGENT_DECODER.decode(raw)


class RedisCredentialStore(CredentialStore):
    """Credential digests in a Redis hash, indexed per agent. Same contract as ``CredentialStore``.

    A digest handed to a second agent authenticates only the second from then on; revoking the
    first agent leaves it alone. Every method raises ``StoreUnavailableError`` if Redis fails.
    """

    def __init__(self, client: RedisClient, replace_script: AsyncScript, prefix: str) -> None:
        self._client = client
        self._replace = replace_script
        self._prefix = prefix
        self._index_key = f"{prefix}:{{cred}}:digests"

    @unavailable_on_error
    async def replace(self, agent: str, digest: str) -> None:
        await self._replace(keys=[self._index_key, self._agent_key(agent)], args=[agent, digest])

    @unavailable_on_error
    async def lookup(self, digest: str) -> str | None:
        agent = await self._client.hget(self._index_key, digest)
        # The client returns bytes (decode_responses is off, so records decode without a copy).
        return agent.decode() if isinstance(agent, bytes) else agent

    @unavailable_on_error
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

    def __init__(
        self, client: RedisClient, claim_script: AsyncScript, prefix: str, trees: RedisTaskTreeIndex
    ) -> None:
        self._client = client
        self._claim = claim_script
        self._prefix = prefix
        self._trees = trees

    @unavailable_on_error
    async def claim(
        self, route: TaskRoute, ttl_s: int, tree: str | None = None, *, finished: bool = False
    ) -> bool:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        key = self._key(route.agent, route.task_id)
        # The value is the owner alone: agent and task id are in the key (compact per task).
        args: list[bytes | str | int] = [route.owner, ttl_s]
        if tree is None:
            return bool(await self._claim(keys=[key], args=args))
        # The route and the tree live in different cluster slots, so not one script: two sent
        # together (one round trip per node: see redis_batch), and a refused claim takes its
        # entry back.
        claimed, _ = await asyncio.gather(
            self._claim(keys=[key], args=args),
            self._trees.add(tree, route.agent, route.task_id, ttl_s),
        )
        if not claimed:
            await self._trees.remove(tree, route.agent, route.task_id)
        return bool(claimed)

    @unavailable_on_error
    async def get(self, agent: str, task_id: str) -> TaskRoute | None:
        raw = await self._client.get(self._key(agent, task_id))
        if raw is None:
            return None
        owner = raw.decode() if isinstance(raw, bytes) else raw
        if owner.startswith("{"):  # written as JSON by an earlier version
            return _ROUTE_DECODER.decode(owner)
        return TaskRoute(agent=agent, task_id=task_id, owner=owner)

    def _key(self, agent: str, task_id: str) -> str:
        return f"{self._prefix}:route:{{{len(agent)}:{agent}:{task_id}}}"


class RedisBackend(StoreBackend):
    """The Redis stores over one client for ``settings.redis_mode`` (see ``open_redis``).

    Connecting is lazy: constructing never fails on an unreachable server; ``ping`` and every
    store method raise ``StoreUnavailableError`` while Redis is down, and work again, without a
    restart, once it is back. Raises ValueError if ``key_prefix`` holds a brace, which would
    break the hash tags.
    """

    def __init__(self, settings: StoreSettings) -> None:
        prefix = settings.key_prefix
        if "{" in prefix or "}" in prefix:
            raise ValueError("store key_prefix must not contain '{' or '}'")
        self._settings = settings
        self._client = open_redis(
            settings, redis_class=BatchingRedis, cluster_class=BatchingRedisCluster
        )
        if settings.replica_acks and isinstance(self._client, BatchingRedis | BatchingRedisCluster):
            self._client.batcher.require_replicas(
                settings.replica_acks, settings.replica_ack_timeout_ms
            )
        trees = RedisTaskTreeIndex(self._client, prefix)
        self._stores = Stores(
            registry=RedisAgentRegistry(
                self._client, self._client.register_script(_SET_STATUS_LUA), prefix
            ),
            credentials=RedisCredentialStore(
                self._client, self._client.register_script(_CREDENTIALS_REPLACE_LUA), prefix
            ),
            task_routes=RedisTaskRouteStore(
                self._client, self._client.register_script(_ROUTE_CLAIM_LUA), prefix, trees
            ),
            delegation_counters=RedisDelegationCounters(self._client, prefix),
            revocations=RedisRevocations(self._client, prefix),
            task_trees=trees,
            budgets=RedisBudgetLedger(self._client, prefix, settings.budget_shards),
            rate_limiter=RedisRateLimiter(self._client, prefix),
            budget_limits=RedisBudgetLimitStore(self._client, prefix),
            approvals=RedisApprovalStore(self._client, prefix),
            kill_switch=RedisKillSwitchStore(self._client, prefix),
            mcp_servers=RedisMcpServerStore(self._client, prefix),
        )
        self._alerts = RedisAlertState(self._client, prefix)
        self._traffic = RedisRecentTraffic(self._client, prefix)

    def stores(self) -> Stores:
        return self._stores

    def alert_state(self) -> AlertState:
        return self._alerts

    def recent_traffic(self) -> RecentTraffic:
        return self._traffic

    @unavailable_on_error
    async def ping(self) -> None:
        await self._client.ping()

    async def start_checks(self) -> None:
        await check_redis(self._settings)

    async def close(self) -> None:
        await self._client.aclose()
