"""What the broker checks about its Redis servers at start: the topology and the eviction policy.

A mode that does not match the servers (a cluster node used as standalone, a standalone server
used as a cluster, a server named where sentinels were expected) would otherwise make every
request fail with a redirection or a protocol error; instead the broker refuses to start with
one line that names the fix. A ``maxmemory-policy`` other than ``noeviction`` lets Redis drop
any key when memory runs short, a budget counter, a revocation or a task tree among them, so the
broker refuses to start on such a server unless ``[store] allow_eviction = true`` says the
operator accepts it; with ``noeviction`` a full Redis refuses writes (``OOM``), which the broker
turns into ``STORE_FULL``: it forwards nothing it could not account for.

Servers that cannot be reached at start are not an error here: the broker starts and refuses
each request with ``STORE_UNAVAILABLE`` until they answer (as without these checks).
"""

from __future__ import annotations

import logging
from typing import Any

from broker.errors import StoreMayEvictError, StoreTopologyError
from broker.settings import StoreSettings
from broker.stores.redis_client import REDIS_FAILURES, node_client, seed_nodes

log = logging.getLogger("a2a_broker.store")
# Redis's own words for what a server runs, as INFO server's redis_mode gives them.
_MODE_NAMES = {"standalone": "a standalone server", "cluster": "a Redis Cluster node",
               "sentinel": "a Sentinel"}
# Warn when used memory passes this share of maxmemory.
FULL_WARNING_SHARE = 0.9


async def check_redis(settings: StoreSettings) -> list[dict[str, Any]]:
    """Raise ``StoreTopologyError`` if the servers do not run ``settings.redis_mode`` or could
    evict the broker's keys (unless allowed); log a warning when none answers or one is nearly
    full. Returns the ``INFO memory`` of every data node it reached (for tests and reports)."""
    for host, port in seed_nodes(settings.redis_url):
        client = node_client(settings, host, port, sentinel=settings.redis_mode == "sentinel")
        try:
            return await _check_node(settings, client, f"{host}:{port}")
        except REDIS_FAILURES as exc:
            log.warning("store node %s:%s not reachable at start (%s)", host, port,
                        type(exc).__name__)
        finally:
            await client.aclose()
    log.warning("no store node answered at start: requests are refused until Redis answers")
    return []


async def _check_node(settings: StoreSettings, client: Any, where: str) -> list[dict[str, Any]]:
    server = await client.info("server")
    _check_mode(settings, where, str(server.get("redis_mode", "standalone")))
    if settings.redis_mode == "sentinel":
        return await _check_sentinel_primary(settings, client)
    if settings.redis_mode == "cluster":
        return await _check_cluster_primaries(settings, client)
    memory = await client.info("memory")
    _check_memory(settings, where, memory)
    return [memory]


def _check_mode(settings: StoreSettings, where: str, mode: str) -> None:
    wanted = settings.redis_mode
    if mode == wanted:
        return
    what = _MODE_NAMES.get(mode, f"a {mode} server")
    raise StoreTopologyError(
        f'[store] redis_mode = "{wanted}", but {where} is {what}: '
        f'set redis_mode = "{mode}" or point redis_url at {_MODE_NAMES[wanted]}'
    )


async def _check_sentinel_primary(settings: StoreSettings, sentinel: Any) -> list[dict[str, Any]]:
    address = await sentinel.sentinel_get_master_addr_by_name(settings.sentinel_service)
    if not address:
        raise StoreTopologyError(
            f'[store] sentinel_service = "{settings.sentinel_service}": the sentinels monitor '
            "no primary of that name"
        )
    host, port = address[0], int(address[1])
    primary = node_client(settings, host, port)
    try:
        server = await primary.info("server")
        if server.get("redis_mode", "standalone") != "standalone":
            raise StoreTopologyError(
                f'[store] sentinel_service = "{settings.sentinel_service}" names {host}:{port}, '
                "which is not a standalone primary"
            )
        memory = await primary.info("memory")
        _check_memory(settings, f"{host}:{port}", memory)
        return [memory]
    finally:
        await primary.aclose()


async def _check_cluster_primaries(settings: StoreSettings, seed: Any) -> list[dict[str, Any]]:
    """Every primary's memory settings: the broker's keys are spread over all of them."""
    found: list[dict[str, Any]] = []
    for host, port in await _primaries(seed):
        node = node_client(settings, host, port)
        try:
            memory = await node.info("memory")
        except REDIS_FAILURES:
            continue  # a primary down at start: its slots fail their requests until failover
        finally:
            await node.aclose()
        _check_memory(settings, f"{host}:{port}", memory)
        found.append(memory)
    return found


async def _primaries(seed: Any) -> list[tuple[str, int]]:
    slots = await seed.execute_command("CLUSTER", "SLOTS")
    addresses = {(_text(entry[2][0]), int(entry[2][1])) for entry in slots}
    return sorted(addresses)


def _check_memory(settings: StoreSettings, where: str, memory: dict[str, Any]) -> None:
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    limit = int(memory.get("maxmemory", 0))
    used = int(memory.get("used_memory", 0))
    if policy != "noeviction" and limit > 0:
        if not settings.allow_eviction:
            raise StoreMayEvictError(
                f"Redis at {where} may evict the broker's keys (maxmemory-policy {policy}): "
                'set maxmemory-policy noeviction, or [store] allow_eviction = true to accept it'
            )
        log.warning("Redis at %s may evict the broker's keys (maxmemory-policy %s): budgets, "
                    "revocations and task trees can vanish", where, policy)
    if limit > 0 and used >= FULL_WARNING_SHARE * limit:
        log.warning("Redis at %s is nearly full (%d of %d bytes): at maxmemory it refuses "
                    "writes and the broker refuses requests with STORE_FULL", where, used, limit)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
