"""What A2A calls look like to the data controls (``broker.stages.datacontrols``).

The request: a message's parts as the caller sent them (JSON-RPC params, or the REST body),
re-encoded only when something in them changed. A unary answer: the JSON-RPC result (or
error), or the REST body. A stream: each event's StreamResponse; the text of an artifact sent
in pieces (``artifactUpdate``, one text part per event) is scanned as one text across the
events, so a value split between two of them is found; what may still be the start of a value
is held back and sent with the artifact's next piece (or in an extra piece of that artifact
before any other event, and at the end).
"""

from __future__ import annotations

from typing import Any

import msgspec

from broker.audit.recorder import digest
from broker.datacontrols import Subject, TextStream
from broker.errors import BrokerError
from broker.protocols.a2a.wire import sse_error_event
from broker.stages.datacontrols import Direction, Scan
from broker.types import MediationContext, Reply

_SSE_END = b"\r\n\r\n"


class A2aDataView:
    def subject(self, ctx: MediationContext, direction: Direction) -> Subject:
        return Subject(direction, ctx.caller or "", agent=ctx.target_name, skill=ctx.skill)

    def target(self, ctx: MediationContext) -> tuple[str, str]:
        return ctx.target_name, ""

    def scan_request(self, ctx: MediationContext, scan: Scan) -> None:
        if ctx.operation is None or not ctx.operation.sends_message or not ctx.body:
            return  # only messages carry the caller's content; task ids and configs do not
        try:
            self._scan_body(ctx, scan)
        except BrokerError:
            # Refused for its data: the audit keeps the body's digest, never a copy of it.
            ctx.body_digest, ctx.body = digest(ctx.body), b""
            raise

    def _scan_body(self, ctx: MediationContext, scan: Scan) -> None:
        document = msgspec.json.decode(ctx.body)  # parsed once already: valid JSON
        if ctx.binding == "jsonrpc" and isinstance(document, dict):
            params = document.get("params")
            new = scan.a2a(params)
            if new is params:
                return
            document = {**document, "params": new}
            ctx.params = msgspec.Raw(msgspec.json.encode(new))
        else:
            new = scan.a2a(document)
            if new is document:
                return
            document = new
            ctx.params = None
        ctx.body = msgspec.json.encode(document)

    def scan_reply(self, ctx: MediationContext, reply: Reply, scan: Scan) -> Reply:
        if not reply.body:
            return reply
        try:
            document = msgspec.json.decode(reply.body)
        except msgspec.DecodeError:
            text = reply.body.decode("utf-8", "replace")
            new_text = scan.text(text)
            if new_text is text:
                return reply
            return Reply(reply.status, new_text.encode(), reply.media_type, reply.headers)
        new = _scan_answer(ctx, document, scan)
        if new is document:
            return reply
        return Reply(reply.status, msgspec.json.encode(new), reply.media_type, reply.headers)

    def stream_scanner(self, ctx: MediationContext, scan: Scan) -> A2aEventScanner:
        return A2aEventScanner(ctx, scan)

    def error_event(self, ctx: MediationContext, err: BrokerError) -> bytes:
        return sse_error_event(err, ctx.binding, ctx.jsonrpc_id)


def _scan_answer(ctx: MediationContext, document: Any, scan: Scan) -> Any:
    """A JSON-RPC response's result (or error), or a REST body."""
    if ctx.binding != "jsonrpc" or not isinstance(document, dict):
        return scan.a2a(document) if ctx.upstream_status in (None, 200) else scan.json(document)
    for member, walk in (("result", scan.a2a), ("error", scan.json)):
        if member in document:
            new = walk(document[member])
            return document if new is document[member] else {**document, member: new}
    return document


class _Held:
    """An artifact whose text arrives in pieces: its stream, and its last event to copy."""

    def __init__(self, stream: TextStream, event: dict[str, Any]) -> None:
        self.stream = stream
        self.event = event


class A2aEventScanner:
    """Scans the events of one A2A stream in the broker's framing (``protocols.a2a.answers``)."""

    def __init__(self, ctx: MediationContext, scan: Scan) -> None:
        self._ctx = ctx
        self._scan = scan
        self._held: dict[str, _Held] = {}

    def feed(self, event: bytes) -> list[bytes]:
        data = _data_of(event)
        if data is None:
            return [event]  # a comment (heartbeat): nothing to scan
        document = msgspec.json.decode(data)
        if event.startswith(b"event: error"):
            return [_frame(self._scan.json(document), error=True)]
        payload = document.get("result") if self._ctx.binding == "jsonrpc" else document
        update = payload.get("artifactUpdate") if isinstance(payload, dict) else None
        if isinstance(update, dict) and _one_text_part(update.get("artifact")):
            return self._piece(document, payload, update)
        out = self.finish()  # held text goes out before any other event
        return [*out, _frame(self._rebuild(document, self._scan.a2a(payload)))]

    def finish(self) -> list[bytes]:
        out = []
        for key in list(self._held):
            out.extend(self._flush(key))
        return out

    def abandon(self) -> None:
        for held in self._held.values():
            self._scan.finished(held.stream)
        self._held.clear()

    def _piece(self, document: Any, payload: Any, update: dict[str, Any]) -> list[bytes]:
        artifact = update["artifact"]
        key = str(artifact.get("artifactId", ""))
        out = [] if update.get("append") else self._flush(key)  # a new artifact of that id
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held(self._scan.stream(), document)
        text = held.stream.feed(artifact["parts"][0]["text"])
        if update.get("lastChunk"):
            text += held.stream.finish()
            self._scan.finished(held.stream)
            del self._held[key]
        # Everything but the streamed text is scanned as a whole.
        rest = self._scan.a2a({**payload, "artifactUpdate": _without_parts(update)})
        new_update = {**rest["artifactUpdate"]}
        part = {k: v for k, v in artifact["parts"][0].items() if k != "text"}
        part = self._scan.a2a({"parts": [part]})["parts"][0]  # its metadata, say
        new_update["artifact"] = {**new_update["artifact"], "parts": [{**part, "text": text}]}
        sent = self._rebuild(document, {**rest, "artifactUpdate": new_update})
        held.event = sent  # the template of a later piece: as sent, so scanned
        out.append(_frame(sent))
        return out

    def _flush(self, key: str) -> list[bytes]:
        """What an artifact's stream still holds, as one more piece of that artifact."""
        held = self._held.get(key)
        if held is None:
            return []
        text = held.stream.finish()  # may refuse: the stream is still held, for abandon()
        del self._held[key]
        self._scan.finished(held.stream)
        if not text:
            return []
        payload: Any = held.event.get("result") if self._ctx.binding == "jsonrpc" else held.event
        update = dict(payload["artifactUpdate"])
        artifact = update["artifact"]
        update["artifact"] = {
            k: v for k, v in artifact.items() if k in ("artifactId", "name")
        } | {"parts": [_with_text(artifact, text)]}
        update["append"], update["lastChunk"] = True, False
        return [_frame(self._rebuild(held.event, {"artifactUpdate": update}))]

    def _rebuild(self, document: Any, payload: Any) -> Any:
        if self._ctx.binding == "jsonrpc" and isinstance(document, dict):
            return {**document, "result": payload}
        return payload


def _one_text_part(artifact: Any) -> bool:
    if not isinstance(artifact, dict):
        return False
    parts = artifact.get("parts")
    return (
        isinstance(parts, list)
        and len(parts) == 1
        and isinstance(parts[0], dict)
        and isinstance(parts[0].get("text"), str)
    )


def _without_parts(update: dict[str, Any]) -> dict[str, Any]:
    artifact = {k: v for k, v in update["artifact"].items() if k != "parts"}
    return {**update, "artifact": artifact}


def _with_text(artifact: dict[str, Any], text: str) -> dict[str, Any]:
    return {**artifact["parts"][0], "text": text}


def _data_of(event: bytes) -> bytes | None:
    for line in event.split(b"\r\n"):
        if line.startswith(b"data: "):
            return line[6:]
    return None


def _frame(document: Any, *, error: bool = False) -> bytes:
    head = b"event: error\r\ndata: " if error else b"data: "
    return head + msgspec.json.encode(document) + _SSE_END
