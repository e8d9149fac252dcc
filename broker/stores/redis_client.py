"""What every Redis store shares: the client for the topology, its Lua scripts, error translation.

``open_redis`` is the one place a Redis client is made from ``[store]`` settings, for each
``redis_mode``: a pooled client to one server (standalone), redis-py's cluster client (cluster)
or a client that asks the sentinels where the primary is (sentinel), with the same TLS files,
ACL user and password, timeouts and retry policy in every mode. ``unavailable_on_error`` is the
one place a Redis failure becomes ``StoreUnavailableError`` (``StoreFullError`` when Redis is
out of memory); every public method of a Redis store is wrapped in it. Neither a URL with its
password nor a password ever goes into a log line or an error: ``redacted_url`` drops them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from importlib import resources
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisClusterException, RedisError

from broker.errors import StoreFullError, StoreUnavailableError
from broker.observability.probes import store_call
from broker.settings import StoreSettings

# What the stores and the channels talk to: one server's client (standalone, sentinel) or the
# cluster client. Both speak the same commands; the few that differ are handled where used.
RedisClient = Redis | RedisCluster
# Every way a Redis call can fail: the cluster client raises RedisClusterException (not a
# RedisError) when no node answers or a slot has no owner.
REDIS_FAILURES = (RedisError, RedisClusterException, OSError)

# A dead Redis must fail a request fast (the broker then refuses with a retryable error) rather
# than hold it for the OS's TCP timeouts.
SOCKET_TIMEOUT_S = 2.0
# PING a connection that sat idle this long before using it, so one broken while idle is replaced.
# A pooled connection idle this long is PINGed before use, so one left from before a Redis
# restart is replaced instead of failing the request that picks it up.
HEALTH_CHECK_INTERVAL_S = 1
MAX_CONNECTIONS = 128
# How long a request waits for a free pooled connection before the store counts as unavailable.
POOL_WAIT_S = 2.0

_P = ParamSpec("_P")
_T = TypeVar("_T")


def lua_source(name: str) -> str:
    """The text of the Lua script ``name`` shipped beside this module."""
    return resources.files("broker.stores").joinpath(name).read_text(encoding="utf-8")


def unavailable_on_error(
    method: Callable[_P, Awaitable[_T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """The one place a Redis failure becomes ``StoreUnavailableError``; its text goes to detail."""

    took, failed = store_call(method.__qualname__)  # its metrics (one round trip per call)

    @functools.wraps(method)
    async def translated(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        except (RedisError, RedisClusterException) as exc:
            failed()
            raise store_error(exc) from exc
        finally:
            took(time.perf_counter() - started)

    return translated


def store_error(exc: Exception) -> StoreUnavailableError:
    """The broker error for a Redis failure: full (``OOM``) or unavailable; text to detail."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OutOfMemoryError):
        return StoreFullError(detail=detail)
    return StoreUnavailableError(detail=detail)


def _connection_kwargs(settings: StoreSettings | None) -> dict[str, Any]:
    """Timeouts, retry policy, TLS files and ACL credentials, the same in every mode."""
    kwargs: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SOCKET_TIMEOUT_S,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        # One immediate retry on a *connection* error only, on a fresh connection: a pooled
        # socket left from before a Redis restart fails that way before the command runs.
        # Timeouts are never retried: the command may have run (create, delete, revoke and
        # acquire report what they changed, and a replay after a lost reply would misreport
        # it or take a second slot); the caller gets a retryable error instead.
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        "retry_on_error": [RedisConnectionError],
    }
    if settings is None:
        return kwargs
    credentials = settings.credentials
    if credentials.username:
        kwargs["username"] = credentials.username
    if credentials.password:
        kwargs["password"] = credentials.password
    if settings.tls_ca_file:
        kwargs["ssl_ca_certs"] = settings.tls_ca_file
    if settings.tls_cert_file:
        kwargs["ssl_certfile"] = settings.tls_cert_file
    if settings.tls_key_file:
        kwargs["ssl_keyfile"] = settings.tls_key_file
    return kwargs


def connection_pool(target: str | StoreSettings) -> BlockingConnectionPool:
    """A pool to one server (a URL, or standalone settings) that fails fast and retries only
    a command that never reached Redis."""
    settings = target if isinstance(target, StoreSettings) else None
    url = target.redis_url if isinstance(target, StoreSettings) else target
    kwargs = _connection_kwargs(settings)
    if not url.startswith("rediss://"):
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("ssl_")}
    return BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT_S, **kwargs
    )


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The primary's connections, found through the sentinels, waiting for a free one as the
    standalone pool does (a plain sentinel pool refuses at once when all are in use).

    The pool is the only user of the ``Sentinel`` that ``_open_sentinel`` made for it, so
    closing the pool (what the client's ``aclose`` does) closes the sentinels' connections
    too; redis-py leaves those to whoever made the ``Sentinel``."""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


def seed_nodes(url: str) -> list[tuple[str, int]]:
    """``host:port`` of every node a comma-separated ``redis_url`` names (default port 6379).

    Each part may be a full URL (``redis://a:7000,redis://b:7001``) or ``host:port``.
    """
    nodes = []
    for part in url.split(","):
        text = part.strip()
        if not text:
            continue
        parsed = urlsplit(text if "://" in text else f"redis://{text}")
        if not parsed.hostname:
            raise ValueError(f"no host in store redis_url part {redacted_url(text)!r}")
        nodes.append((parsed.hostname, parsed.port or 6379))
    if not nodes:
        raise ValueError("store redis_url names no node")
    return nodes


def redacted_url(url: str) -> str:
    """``url`` without its user and password, for a log line or an error."""
    parts = []
    for part in url.split(","):
        parsed = urlsplit(part.strip() if "://" in part else f"redis://{part.strip()}")
        host = parsed.hostname or "?"
        port = f":{parsed.port}" if parsed.port else ""
        path = parsed.path if parsed.path not in ("", "/") else ""
        parts.append(f"{parsed.scheme}://{host}{port}{path}")
    return ",".join(parts)


def _uses_tls(settings: StoreSettings) -> bool:
    return settings.redis_url.strip().startswith("rediss://")


def open_redis(
    target: str | StoreSettings, *, redis_class: type[Redis] = Redis,
    cluster_class: type[RedisCluster] = RedisCluster,
) -> RedisClient:
    """A client for ``target``: a standalone URL, or ``[store]`` settings in any mode.

    Does not connect: the first command does (and fails with a ``RedisError`` while the
    servers are unreachable). ``redis_class`` / ``cluster_class`` choose the client types
    (``BatchingRedis`` and ``BatchingRedisCluster`` for the stores). Raises ValueError if
    ``redis_url`` names no node.
    """
    if isinstance(target, str):
        return redis_class.from_pool(connection_pool(target))
    settings = target
    match settings.redis_mode:
        case "standalone":
            return redis_class.from_pool(connection_pool(settings))
        case "cluster":
            return _open_cluster(settings, cluster_class)
        case "sentinel":
            return _open_sentinel(settings, redis_class)


def open_url(url: str, *, timeout_s: float) -> Redis:
    """A plain client for one server at ``url`` (a side store with its own URL and timeout)."""
    return Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def is_cluster(client: RedisClient) -> bool:
    """Is ``client`` redis-py's cluster client (where a few commands are not available)?"""
    return isinstance(client, RedisCluster)


def _tls_kwargs(settings: StoreSettings, kwargs: dict[str, Any]) -> dict[str, Any]:
    if _uses_tls(settings):
        return {**kwargs, "ssl": True}
    return {k: v for k, v in kwargs.items() if not k.startswith("ssl_")}


def _open_cluster(settings: StoreSettings, cluster_class: type[RedisCluster]) -> RedisCluster:
    kwargs = _tls_kwargs(settings, _connection_kwargs(settings))
    del kwargs["retry_on_error"]
    # No retries of a command by the cluster client: a node that failed makes the request
    # fail at once (the caller gets a retryable error, the broker forwards nothing), and a
    # topology refresh follows, so a promoted replica serves the next request. A timeout is
    # never replayed (see _connection_kwargs).
    kwargs["retry"] = Retry(NoBackoff(), 0)
    nodes = [ClusterNode(host, port) for host, port in seed_nodes(settings.redis_url)]
    return cluster_class(startup_nodes=nodes, max_connections=MAX_CONNECTIONS, **kwargs)


def _open_sentinel(settings: StoreSettings, redis_class: type[Redis]) -> Redis:
    kwargs = _tls_kwargs(settings, _connection_kwargs(settings))
    sentinel_kwargs = {
        key: value for key, value in kwargs.items()
        if key not in ("username", "password", "retry", "retry_on_error")
    }
    credentials = settings.credentials
    if credentials.sentinel_username:
        sentinel_kwargs["username"] = credentials.sentinel_username
    if credentials.sentinel_password:
        sentinel_kwargs["password"] = credentials.sentinel_password
    sentinel = Sentinel(seed_nodes(settings.redis_url), sentinel_kwargs=sentinel_kwargs)
    client: Redis = sentinel.master_for(
        settings.sentinel_service,
        redis_class=redis_class,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_WAIT_S,
        **kwargs,
    )
    return client


def node_client(settings: StoreSettings, host: str, port: int, *, sentinel: bool = False) -> Redis:
    """A client to one node named by ``redis_url`` (a seed or a sentinel), with the settings'
    TLS files and credentials (the sentinel ones for a sentinel)."""
    kwargs = _tls_kwargs(settings, _connection_kwargs(settings))
    if sentinel:
        kwargs.pop("username", None)
        kwargs.pop("password", None)
        if settings.credentials.sentinel_username:
            kwargs["username"] = settings.credentials.sentinel_username
        if settings.credentials.sentinel_password:
            kwargs["password"] = settings.credentials.sentinel_password
    return Redis(host=host, port=port, **kwargs)
