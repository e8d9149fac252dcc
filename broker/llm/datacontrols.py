"""What LLM calls look like to the data controls (``broker.stages.datacontrols``).

The request: a chat's messages (contents, names, tool-call arguments) or an embeddings
``input``; when something changed, the provider gets the re-encoded body and the audit its
digest. A unary completion: each choice's message. A stream: each choice's ``delta.content``
is scanned as one text across chunks, so a value split between two chunks is found; what may
still be the start of a value is held back and sent with the choice's next chunk (or in one
more chunk before ``[DONE]`` and at the end). The rest of a chunk is scanned as it comes.
"""

from __future__ import annotations

from typing import Any

import msgspec

from broker.datacontrols import Subject, TextStream
from broker.errors import BrokerError
from broker.llm.context import LlmContext
from broker.llm.errors import LlmProviderError
from broker.protocols.llm.wire import openai_error_event
from broker.stages.datacontrols import Direction, Scan
from broker.types import Reply

_DONE = b"[DONE]"


class LlmDataView:
    def subject(self, ctx: LlmContext, direction: Direction) -> Subject:
        model = ctx.request.model if ctx.request is not None else ""
        return Subject(direction, ctx.caller or "", model=model)

    def target(self, ctx: LlmContext) -> tuple[str, str]:
        return "", ctx.request.model if ctx.request is not None else ""

    def scan_request(self, ctx: LlmContext, scan: Scan) -> None:
        request = ctx.request
        assert request is not None  # noqa: S101 - parsed earlier
        document = msgspec.json.decode(request.body)
        if ctx.kind == "chat":
            new = scan.chat_request(document)
        elif isinstance(document, dict) and "input" in document:
            found = scan.json(document["input"])
            new = document if found is document["input"] else {**document, "input": found}
        else:
            new = document
        if new is document:
            return
        body = msgspec.json.encode(new)
        ctx.request = msgspec.structs.replace(request, body=body)

        async def forwarded() -> bytes:  # what the audit's digest covers: what was sent on
            return body

        ctx.read_body = forwarded

    def scan_reply(self, ctx: LlmContext, reply: Reply, scan: Scan) -> Reply:
        if ctx.kind != "chat" or reply.status != 200 or not reply.body:
            return reply  # vectors, or the provider's own error
        try:
            document = msgspec.json.decode(reply.body)
        except msgspec.DecodeError:  # not a completion: relayed as the text it is, scanned
            text = reply.body.decode("utf-8", "replace")
            scanned = scan.text(text)
            body = reply.body if scanned is text else scanned.encode()
            return Reply(reply.status, body, reply.media_type, reply.headers)
        new = scan.chat_response(document)
        if new is document:
            return reply
        return Reply(reply.status, msgspec.json.encode(new), reply.media_type, reply.headers)

    def stream_scanner(self, ctx: LlmContext, scan: Scan) -> LlmEventScanner:
        return LlmEventScanner(scan)

    def error_event(self, ctx: LlmContext, err: BrokerError) -> bytes:
        return openai_error_event(err)


class LlmEventScanner:
    """Scans the chunks of one streamed chat completion."""

    def __init__(self, scan: Scan) -> None:
        self._scan = scan
        self._held: dict[int, TextStream] = {}
        self._last: dict[str, Any] = {}  # the last chunk, the template of an extra one

    def feed(self, event: bytes) -> list[bytes]:
        data = _data_of(event)
        if data is None:
            return [event]
        if data.strip() == _DONE:
            return [*self.finish(), event]
        try:
            document = msgspec.json.decode(data)
        except msgspec.DecodeError:  # what cannot be read cannot be checked: not relayed
            raise LlmProviderError(detail="a stream chunk that is not JSON") from None
        choices = document.get("choices") if isinstance(document, dict) else None
        if not isinstance(choices, list) or not choices:
            return [_frame(self._scan.json(document))]  # usage, or an error object
        new_choices = [self._choice(choice) for choice in choices]
        rest = self._scan.chat_response({**document, "choices": [_no_content(c) for c in choices]})
        merged = [
            {**scanned, "delta": {**scanned.get("delta", {}), **content}} if content else scanned
            for scanned, content in zip(rest["choices"], new_choices, strict=True)
        ]
        self._last = {**rest, "choices": merged}  # the template of an extra chunk: as sent
        return [_frame(self._last)]

    def finish(self) -> list[bytes]:
        out = []
        for index in list(self._held):
            stream = self._held[index]
            text = stream.finish()  # may refuse: the stream is still held, for abandon()
            del self._held[index]
            self._scan.finished(stream)
            if text:
                choice = {"index": index, "delta": {"content": text}, "finish_reason": None}
                out.append(_frame({**self._last, "choices": [choice]}))
        return out

    def abandon(self) -> None:
        for stream in self._held.values():
            self._scan.finished(stream)
        self._held.clear()

    def _choice(self, choice: Any) -> dict[str, str]:
        """The choice's released content (``{}`` when it has none)."""
        if not isinstance(choice, dict):
            return {}
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        index = choice.get("index", 0) if isinstance(choice.get("index", 0), int) else 0
        finishing = choice.get("finish_reason") is not None
        if not isinstance(content, str) and not (finishing and index in self._held):
            return {}
        stream = self._held.get(index)
        if stream is None:
            stream = self._held[index] = self._scan.stream()
        text = stream.feed(content) if isinstance(content, str) else ""
        if finishing:
            text += stream.finish()
            self._scan.finished(stream)
            del self._held[index]
        return {"content": text}


def _no_content(choice: Any) -> Any:
    if not isinstance(choice, dict) or not isinstance(choice.get("delta"), dict):
        return choice
    delta = {k: v for k, v in choice["delta"].items() if k != "content"}
    return {**choice, "delta": delta}


def _data_of(event: bytes) -> bytes | None:
    for line in event.replace(b"\r\n", b"\n").split(b"\n"):
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


def _frame(document: Any) -> bytes:
    return b"data: " + msgspec.json.encode(document) + b"\n\n"
