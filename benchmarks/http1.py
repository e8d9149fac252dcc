"""Incremental HTTP/1.1 response parsing for the open-loop generator (``openloop.py``).

One request is in flight per connection, so responses arrive in order and whole; this parser
only has to find where each one ends: Content-Length, chunked, or at connection close.
"""

from __future__ import annotations

from typing import NamedTuple


class MalformedResponseError(ValueError):
    """The server sent bytes that are not an HTTP/1.1 response."""


class Response(NamedTuple):
    status: int
    body: bytes
    close: bool  # the server will close the connection after this response


class ResponseParser:
    """Incremental parser for HTTP/1.1 responses (Content-Length, chunked, or until close).

    ``feed`` returns every response completed by the bytes given so far; ``feed_eof`` the one
    whose body ran until the connection closed, if any. Raises ``MalformedResponseError``.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._head: tuple[int, bool] | None = None  # (status, close) once the head is read
        self._length = -1  # body bytes still expected; -1 chunked; -2 until close
        self._chunks = bytearray()

    def feed(self, data: bytes) -> list[Response]:
        self._buf += data
        done = []
        while (response := self._next()) is not None:
            done.append(response)
        return done

    def feed_eof(self) -> Response | None:
        if self._head is None or self._length != -2:
            return None
        body, self._buf = bytes(self._buf), bytearray()
        return self._finish(body)

    def _next(self) -> Response | None:
        if self._head is None and not self._read_head():
            return None
        if self._length >= 0:
            if len(self._buf) < self._length:
                return None
            body = bytes(self._buf[: self._length])
            del self._buf[: self._length]
            return self._finish(body)
        return self._read_chunks() if self._length == -1 else None

    def _read_head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = bytes(self._buf[:end]).split(b"\r\n")
        del self._buf[: end + 4]
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise MalformedResponseError(f"bad status line {lines[0][:80]!r}")
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise MalformedResponseError(f"bad header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip().lower()
        if 100 <= status < 200:  # an interim answer: the real one follows
            return self._read_head()
        close = headers.get(b"connection") == b"close" or parts[0] == b"HTTP/1.0"
        self._head = (status, close)
        if status in (204, 304):
            self._length = 0
        elif b"chunked" in headers.get(b"transfer-encoding", b""):
            self._length = -1
        elif b"content-length" in headers:
            self._length = int(headers[b"content-length"])
        else:
            self._length = -2
        return True

    def _read_chunks(self) -> Response | None:
        while True:
            eol = self._buf.find(b"\r\n")
            if eol < 0:
                return None
            try:
                size = int(bytes(self._buf[:eol]).split(b";", 1)[0], 16)
            except ValueError:
                raise MalformedResponseError("bad chunk size") from None
            if size == 0:
                trailer_end = 2 if self._buf[eol + 2 : eol + 4] == b"\r\n" else -1
                if trailer_end < 0:
                    found = self._buf.find(b"\r\n\r\n", eol + 2)
                    if found < 0:
                        return None
                    del self._buf[: found + 4]
                else:
                    del self._buf[: eol + 4]
                body, self._chunks = bytes(self._chunks), bytearray()
                return self._finish(body)
            if len(self._buf) < eol + 2 + size + 2:
                return None
            self._chunks += self._buf[eol + 2 : eol + 2 + size]
            del self._buf[: eol + 2 + size + 2]

    def _finish(self, body: bytes) -> Response:
        assert self._head is not None
        status, close = self._head
        self._head, self._length = None, -1
        return Response(status, body, close)
