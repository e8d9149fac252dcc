"""What every Redis store shares: the connection pool, its Lua scripts, and error translation.

``unavailable_on_error`` is the one place a Redis failure becomes ``StoreUnavailableError``;
every public method of a Redis store is wrapped in it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from importlib import resources
from typing import Any, ParamSpec, TypeVar

from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from broker.errors import StoreUnavailableError
from broker.observability.probes import store_call

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
        except RedisError as exc:
            failed()
            raise StoreUnavailableError(detail=f"{type(exc).__name__}: {exc}") from exc
        finally:
            took(time.perf_counter() - started)

    return translated


def connection_pool(url: str) -> BlockingConnectionPool:
    """A pool to ``url`` that fails fast and retries only a command that never reached Redis."""
    return BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_WAIT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        # One immediate retry on a *connection* error only, on a fresh connection: a pooled
        # socket left from before a Redis restart fails that way before the command runs.
        # Timeouts are never retried: the command may have run (create, delete, revoke and
        # acquire report what they changed, and a replay after a lost reply would misreport it
        # or take a second slot); the caller gets a retryable error instead.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        retry_on_error=[RedisConnectionError],
    )
