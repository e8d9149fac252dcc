"""A TCP proxy that plays an upstream closing idle keep-alive connections, on cue.

    proxy = StaleProxy(upstream_port)
    await proxy.start()          # proxy.url is http://127.0.0.1:<port>
    proxy.arm()                  # the next request on a reused connection meets a closed socket
    ...
    await proxy.stop()

Every connection is relayed byte for byte to the upstream. Armed, the proxy closes the next
client connection that sends data after it has carried an answer back (so: a second request on
a pooled keep-alive connection), without passing that request on: the client sees exactly what
it sees when a server closed an idle connection as the request was sent (aiohttp raises
ServerDisconnectedError), and the upstream never sees the request. New connections always go
through. HTTP-agnostic: clients do not pipeline, so a connection's next bytes after an answer
are its next request.
"""

from __future__ import annotations

import asyncio
import contextlib


class StaleProxy:
    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._armed = 0
        self.dropped = 0  # requests dropped on a reused connection
        self.connections = 0  # client connections accepted

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._server.wait_closed()

    def arm(self, times: int = 1) -> None:
        """Drop the next ``times`` requests that arrive on a reused connection."""
        self._armed += times

    async def _serve(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream, to_upstream = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        answered = asyncio.Event()
        back = asyncio.create_task(_pipe(upstream, to_client, answered))
        try:
            while data := await client.read(65536):
                if answered.is_set() and self._armed:
                    self._armed -= 1
                    self.dropped += 1
                    return  # closed without passing the request on
                to_upstream.write(data)
                await to_upstream.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            back.cancel()
            for writer in (to_client, to_upstream):
                writer.close()
            self._tasks.discard(task)


async def _pipe(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, answered: asyncio.Event
) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
            answered.set()
    sink.close()
