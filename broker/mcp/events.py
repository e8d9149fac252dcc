"""An MCP server's answer relayed message by message: SSE re-framed event by event, or one JSON.

A Streamable HTTP server answers a POSTed request either with one JSON message or with an SSE
stream: notifications (progress, log messages), requests of its own (sampling, elicitation) and,
last, the response. The relay reads each event as it arrives, reads its message with the same
rules as the caller's (``broker.mcp.reading``), lets ``on_message`` look at it or rewrite it
(list filtering, the virtual server's names), and sends a fresh SSE frame for it at once: the
stream is never buffered whole (the events are cut by ``broker.protocols.sse.SseParser``, the parser
every relay of the broker shares). Keep-alive comments are passed on. A server that sends something
that is not an MCP message, goes quiet for longer than ``idle_timeout_s`` or sends an event
larger than ``max_event_bytes`` gets the stream ended with a JSON-RPC error answering the
caller's request, so the client is not left waiting.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec

from broker.errors import ERROR_DOMAIN_BROKER, BrokerError, StreamMaxDurationError
from broker.mcp.errors import McpServerBadResponseError, McpServerTimeoutError
from broker.mcp.reading import McpMessage, McpReadError, read_message
from broker.mcp.wire import error_body, sse_frame
from broker.protocols.sse import HEARTBEAT, SseEvent, SseParser

OnMessage = Callable[[McpMessage, bytes], Awaitable[bytes | None]]
# An event id is relayed only if it is a plain token: it goes back to the server in
# Last-Event-ID, and it must not smuggle SSE syntax to the client.
_SAFE_EVENT_ID = re.compile(rb"[\x21-\x7e]{1,256}")


def _event_too_large() -> BrokerError:
    return McpServerBadResponseError("An event in the MCP server's stream is too large.")


async def relay_sse(
    chunks: AsyncIterator[bytes],
    *,
    request_id: msgspec.Raw | None,
    on_message: OnMessage | None = None,
    idle_timeout_s: float,
    max_event_bytes: int,
    max_duration_s: float | None = None,
    raising: bool = False,
) -> AsyncIterator[bytes]:
    """Yield the frames to send the caller, one per upstream event, as the events arrive.

    The stream ends with a JSON-RPC error answering ``request_id`` when the server is quiet for
    ``idle_timeout_s`` (``McpServerTimeoutError``) or the stream outlives ``max_duration_s``
    (``StreamMaxDurationError``), as well as on a bad or oversized event; with ``raising``
    (an answer read whole, not relayed) that error is raised instead."""
    parser = SseParser(max_event_bytes, _event_too_large)
    iterator = aiter(chunks)
    loop = asyncio.get_running_loop()
    deadline = None if max_duration_s is None else loop.time() + max_duration_s
    try:
        while True:
            if deadline is not None and loop.time() >= deadline:
                raise StreamMaxDurationError()
            quiet = idle_timeout_s if deadline is None else min(
                idle_timeout_s, deadline - loop.time())
            try:
                async with asyncio.timeout(quiet):
                    chunk = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    raise StreamMaxDurationError() from None
                raise McpServerTimeoutError(
                    "The MCP server's stream sent nothing for too long.") from None
            for event in parser.feed(chunk):
                frame = await _frame(event, on_message)
                if frame is not None:
                    yield frame
    except BrokerError as err:
        if raising:
            raise
        yield sse_frame(error_body(err, request_id))


async def relay_event(raw: bytes, on_message: OnMessage | None) -> bytes | None:
    """One raw event of the server's stream (as ``broker.protocols.sse.relay`` cuts them),
    re-framed for the caller, or None. Raises ``McpServerBadResponseError``."""
    events = SseParser(len(raw) + 1, _event_too_large).feed(raw)
    return await _frame(events[0], on_message) if events else None


async def _frame(event: SseEvent, on_message: OnMessage | None) -> bytes | None:
    event_id = event.event_id if _SAFE_EVENT_ID.fullmatch(event.event_id) else b""
    if event.data is None or event.data == b"":
        return sse_frame(b"", event_id=event_id) if event_id else HEARTBEAT
    data = await relay_message(event.data, on_message)
    return None if data is None else sse_frame(data, event_id=event_id)


async def relay_message(data: bytes, on_message: OnMessage | None) -> bytes | None:
    """One message from the server, read and passed through ``on_message`` (which returns the
    bytes to send, or None to send nothing). Raises ``McpServerBadResponseError``."""
    try:
        message = read_message(data)
    except McpReadError as bad:
        raise McpServerBadResponseError(detail=bad.error.reason) from None
    if message.is_error and _claims_the_brokers_domain(message):
        raise McpServerBadResponseError(
            "The MCP server answered with an error in the broker's own domain.",
            detail="upstream error claims domain a2a-broker")
    return data if on_message is None else await on_message(message, data)


def _claims_the_brokers_domain(message: McpMessage) -> bool:
    """An error whose data says the broker raised it: only the broker may (decision 0017's rule
    for agents, applied to MCP servers), so a server cannot pass off its refusal as policy's."""
    error = (message.payload or {}).get("error")
    details = error.get("data") if isinstance(error, dict) else None
    items = details if isinstance(details, list) else [details]
    return any(isinstance(d, dict) and d.get("domain") == ERROR_DOMAIN_BROKER for d in items)


async def relay_json(
    body: bytes, *, request_id: msgspec.Raw | None, on_message: OnMessage | None = None
) -> bytes:
    """A one-message JSON answer, read and rewritten like an SSE event's; a bad one becomes a
    JSON-RPC error answering ``request_id``."""
    try:
        data = await relay_message(body, on_message)
    except BrokerError as err:
        return error_body(err, request_id)
    return data if data is not None else error_body(McpServerBadResponseError(), request_id)
