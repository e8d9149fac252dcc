"""What MCP calls look like to the data controls (``broker.stages.datacontrols``).

The request: a ``tools/call``'s or ``prompts/get``'s ``arguments`` (every string at any
depth); when something changed, the server gets the re-encoded message (on the virtual server,
with the server's own name) and the audit its digest. The answer: a JSON message's ``result``
or ``params`` (a tool's content, a notification's data), and each event of a stream the same,
one event at a time. The rules' ``agents`` match ``mcp:<server>``, their ``skills`` the tool.
"""

from __future__ import annotations

from typing import Any

import msgspec

from broker.datacontrols import Subject
from broker.errors import BrokerError
from broker.mcp.context import McpContext
from broker.mcp.forward import encode
from broker.mcp.wire import error_body, sse_frame
from broker.protocols.sse import SseParser
from broker.stages.datacontrols import Direction, Scan
from broker.types import Reply

_WITH_ARGUMENTS = frozenset({"tools/call", "prompts/get"})
_SCANNED = ("result", "params")  # what a server's message carries that may hold data


class McpDataView:
    def subject(self, ctx: McpContext, direction: Direction) -> Subject:
        name = ctx.judged.name if ctx.judged is not None else ""
        return Subject(direction, ctx.caller or "", agent=ctx.target, skill=name)

    def target(self, ctx: McpContext) -> tuple[str, str]:
        return ctx.target, ""

    def scan_request(self, ctx: McpContext, scan: Scan) -> None:
        message, judged = ctx.message, ctx.judged
        if message is None or judged is None or judged.method not in _WITH_ARGUMENTS:
            return
        params = message.params or {}
        arguments = params.get("arguments")
        if not isinstance(arguments, dict):
            return
        scanned = scan.json(arguments)
        if scanned is arguments:
            return
        if ctx.routed_params is not None:  # the virtual server forwards these
            ctx.routed_params = {**ctx.routed_params, "arguments": scanned}
        assert message.payload is not None  # noqa: S101 - a request keeps its payload
        ctx.body = encode({**message.payload, "params": {**params, "arguments": scanned}})

    def scan_reply(self, ctx: McpContext, reply: Reply, scan: Scan) -> Reply:
        if reply.status != 200 or not reply.body:
            return reply
        try:
            document = msgspec.json.decode(reply.body)
        except msgspec.DecodeError:
            return reply  # the broker's own answers are JSON; nothing else reaches here
        scanned = _scan_message(document, scan)
        if scanned is document:
            return reply
        return Reply(reply.status, encode(scanned), reply.media_type, reply.headers)

    def stream_scanner(self, ctx: McpContext, scan: Scan) -> McpEventScanner:
        return McpEventScanner(scan)

    def error_event(self, ctx: McpContext, err: BrokerError) -> bytes:
        return sse_frame(error_body(err, ctx.jsonrpc_id))


class McpEventScanner:
    """Scans the events of one streamed answer, each a whole MCP message (the relay frames one
    message per event): nothing is held back across events."""

    def __init__(self, scan: Scan) -> None:
        self._scan = scan

    def feed(self, event: bytes) -> list[bytes]:
        parsed = SseParser(len(event) + 1).feed(event)
        if not parsed or parsed[0].data is None:
            return [event]  # a heartbeat, an id-only event
        document = msgspec.json.decode(parsed[0].data)
        scanned = _scan_message(document, self._scan)
        if scanned is document:
            return [event]
        return [sse_frame(encode(scanned), event_id=parsed[0].event_id)]

    def finish(self) -> list[bytes]:
        return []

    def abandon(self) -> None:
        """Nothing is held across events, so a failed stream leaves nothing unrecorded."""


def _scan_message(document: Any, scan: Scan) -> Any:
    if not isinstance(document, dict):
        return document
    for member in _SCANNED:
        value = document.get(member)
        if isinstance(value, dict):
            scanned = scan.json(value)
            return document if scanned is value else {**document, member: scanned}
    return document
