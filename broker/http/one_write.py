"""A response's head and a unary body leave in one write.

uvicorn's response cycle writes the status line and headers when the application sends
``http.response.start``, and the body when it sends ``http.response.body``: two system calls
and two TCP segments for every unary answer, with the peer woken for each. ``HeadWithBody`` is
the transport as one cycle sees it: the cycle's first write is held until its next one, or
until the end of the loop turn at the latest (a stream's headers, a ``100 Continue``, go out as
soon as before, only after the callbacks already ready to run). Decision 0077.
"""

from __future__ import annotations

import asyncio

# A body up to this size is copied behind the head (cheaper than a vectored write); a larger
# one is handed to the transport beside it, uncopied.
_JOIN_BELOW = 64 * 1024


class HeadWithBody:
    """One response cycle's view of the connection's transport (``write``, ``is_closing``
    and ``close``, all a cycle uses). Bytes are written in the order they were given."""

    __slots__ = ("_held", "_hold", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._hold = True  # the cycle's first write: its head
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._hold:
            self._hold = False
            self._held = data
            self._loop.call_soon(self.flush)
            return
        held = self._held
        if held is None:
            self._transport.write(data)
            return
        self._held = None
        if len(data) < _JOIN_BELOW:
            self._transport.write(held + data)
        else:
            self._transport.writelines((held, data))

    def flush(self) -> None:
        """Write what is held now (the end of the loop turn it was given in)."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._transport.close()
