"""The lean client's connections: opened under the egress rules, pooled per destination.

``ConnectionPool`` bounds the connections in use (``[limits] upstream_pool_size``, like
aiohttp's connector limit: idle keep-alive connections do not count) and keeps idle ones per
(scheme, host, port). ``Connector`` opens one: the host's addresses (a name is resolved and every
refused address dropped, as ``EgressResolver`` does for aiohttp), each socket made by
``EgressPolicy.guarded_socket`` before connect() (happy eyeballs between them, as aiohttp), then
TLS for https.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiohappyeyeballs

from broker.outbound.connection import UpstreamConnection
from broker.outbound.egress import EgressPolicy, EgressRefusedOSError
from broker.outbound.errors import ConnectTimeoutError, PoolTimeoutError

PoolKey = tuple[str, str, int]  # scheme, host, port
AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]
_KEEPALIVE_S = 15.0  # aiohttp's keepalive_timeout: an idle connection older than this is dropped
_DNS_TTL_S = 10.0  # as the aiohttp connector's: a changed record is picked up soon
_HAPPY_EYEBALLS_DELAY_S = 0.25  # aiohttp's: the next address is tried 250 ms into a connect


def tls_context() -> ssl.SSLContext:
    """The context aiohttp verifies upstreams with: system trust store, HTTP/1.1 over ALPN."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(("http/1.1",))
    return context


class Connector:
    """Opens connections to the addresses the egress policy allows, and only those."""

    def __init__(self, policy: EgressPolicy, tls: ssl.SSLContext) -> None:
        self._policy = policy
        self._tls = tls
        self._dns: dict[tuple[str, int], tuple[float, list[AddrInfo]]] = {}

    async def open(self, key: PoolKey, literal: bool) -> UpstreamConnection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        infos = _literal_info(host, port) if literal else await self._resolve(host, port)
        # Happy eyeballs over the allowed addresses, as aiohttp connects: every socket comes from
        # the guard, which refuses (EgressRefusedOSError) before any packet leaves.
        sock = await aiohappyeyeballs.start_connection(
            infos, happy_eyeballs_delay=_HAPPY_EYEBALLS_DELAY_S, interleave=None,
            socket_factory=self._policy.guarded_socket,
        )  # fmt: skip
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = self._tls if scheme == "https" else None
            transport, conn = await loop.create_connection(
                UpstreamConnection, sock=sock, ssl=tls, server_hostname=host if tls else None
            )
        except BaseException:
            sock.close()
            raise
        conn.connection_made(transport)  # uvloop may call it only on its next turn
        return conn

    async def _resolve(self, host: str, port: int) -> list[AddrInfo]:
        loop = asyncio.get_running_loop()
        cached = self._dns.get((host, port))
        if cached is not None and cached[0] > loop.time():
            return cached[1]
        infos = await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG
        )
        refusals = [self._policy.address_refusal(str(info[4][0])) for info in infos]
        allowed: list[AddrInfo] = [
            i for i, refusal in zip(infos, refusals, strict=True) if refusal is None
        ]
        if not allowed:
            if not refusals:
                raise socket.gaierror(socket.EAI_NONAME, "no address")
            first = refusals[0]
            assert first is not None  # noqa: S101 - nothing allowed, so every one refused
            raise EgressRefusedOSError(first)
        if len(self._dns) > 4096:
            self._dns.clear()
        self._dns[(host, port)] = (loop.time() + _DNS_TTL_S, allowed)
        return allowed


def _literal_info(host: str, port: int) -> list[AddrInfo]:
    """The one address an IP-literal host denotes (``check_url`` has parsed it)."""
    if ":" in host:
        return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]
    return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]


class ConnectionPool:
    """At most ``limit`` connections in use (0: no bound); idle ones kept per destination."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._in_use = 0
        self._idle: dict[PoolKey, list[UpstreamConnection]] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(
        self,
        key: PoolKey,
        open_: Callable[[], Awaitable[UpstreamConnection]],
        timeout_s: float,
        *,
        fresh: bool = False,
    ) -> UpstreamConnection:
        """A connection to ``key``: an idle one unless ``fresh``, else a new one from ``open_``.
        PoolTimeoutError if no slot frees up, ConnectTimeoutError if opening takes longer,
        within ``timeout_s`` in all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        await self._slot(deadline)
        try:
            if not fresh and (conn := self._pooled(key, loop.time())) is not None:
                return conn
            try:
                async with asyncio.timeout_at(deadline):
                    return await open_()
            except TimeoutError:
                raise ConnectTimeoutError("connect timeout") from None
        except BaseException:
            self._free_slot()
            raise

    def release(self, key: PoolKey, conn: UpstreamConnection) -> None:
        """Give a connection back: kept if it can carry another request, closed otherwise."""
        if conn.reusable:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.setdefault(key, []).append(conn)
        else:
            conn.close()
        self._free_slot()

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    def _pooled(self, key: PoolKey, now: float) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be closed by now
            if not conn.closed and now - conn.idle_since < _KEEPALIVE_S:
                return conn
            conn.close()
        return None

    async def _slot(self, deadline: float) -> None:
        if not self._limit or self._in_use < self._limit:
            self._in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter  # a release hands its slot over (``_free_slot``)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._free_slot()  # handed a slot as the wait ended: pass it on
            if isinstance(exc, TimeoutError):
                raise PoolTimeoutError("every pooled connection is in use") from None
            raise
        finally:
            if not waiter.done():
                waiter.cancel()

    def _free_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter, in_use unchanged
                return
        self._in_use -= 1
