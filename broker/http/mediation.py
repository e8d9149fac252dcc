"""The A2A edges: JSON-RPC and HTTP+JSON requests for a registered agent, into the pipeline.

Thin by design: build a MediationContext from the HTTP request, run the pipeline, turn the
outcome into a response. No policy here.

The mediation requests themselves take the raw ASGI path (``MediationEdges``, decision 0064):
the app object the server runs sends the JSON-RPC and HTTP+JSON paths of an agent, with an
allowed method, straight into the pipeline, and everything else to Litestar. Litestar's
request and response objects, its handler signature model and the response's ASGI wrapper
cost more than the rest of the edge put together. The Litestar routes below stay registered:
they answer what the raw path leaves to them (another method: 405 in the binding's shape), so
every refusal reads as before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from litestar import Response, post, route
from litestar.exceptions import ClientException
from litestar.params import FromPath
from litestar.response import Stream
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    Scope,
    Send,
)

from broker.errors import (
    BodyTooLargeError,
    BrokerError,
    BrokerInternalError,
    InvalidRequestError,
)
from broker.http.one_write import sent_whole
from broker.http.state import AnyRequest, runtime_of
from broker.llm.context import CallKind, LlmContext
from broker.mcp.context import VIRTUAL, McpContext
from broker.mcp.wire import error_reply as mcp_error_reply
from broker.protocols.a2a.wire import error_reply
from broker.protocols.llm.wire import openai_error_reply
from broker.types import Binding, MediationContext, Outcome, Reply

log = logging.getLogger("a2a_broker")

_SSE_MEDIA_TYPE = "text/event-stream"


def inbound_headers(request: AnyRequest) -> dict[str, str]:
    """Lower-case header names; repeated headers merged with ", " (as A2A-Extensions wants)."""
    return scope_headers(request.scope["headers"])


def scope_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """``inbound_headers`` of an ASGI scope's raw header list."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def body_reader(request: AnyRequest) -> Callable[[], Awaitable[bytes]]:
    """The request's body, read once when a stage asks (every protocol's edge uses it)."""

    async def read() -> bytes:
        try:
            return await request.body()
        except ClientException as exc:
            if exc.status_code == 413:
                raise BodyTooLargeError from None
            raise InvalidRequestError("The request body could not be read.") from None

    return read


def _context(request: AnyRequest, name: str, binding: Binding, tail: str = "") -> MediationContext:
    return MediationContext(
        binding=binding,
        target_name=name,
        http_method=request.method,
        headers=inbound_headers(request),
        read_body=body_reader(request),
        rest_tail=tail,
        query_string=request.scope.get("query_string", b"").decode("latin-1"),
    )


def to_response(outcome: Outcome) -> Response[bytes] | Stream:
    if isinstance(outcome, Reply):
        return Response(
            outcome.body,
            status_code=outcome.status,
            media_type=outcome.media_type,
            headers=dict(outcome.headers),
        )
    return Stream(
        outcome.events,
        status_code=outcome.status,
        media_type=_SSE_MEDIA_TYPE,
        headers=dict(outcome.headers),
    )


@post(["/agents/{name:str}/jsonrpc", "/agents/{name:str}/jsonrpc/"], status_code=200)
async def jsonrpc_edge(request: AnyRequest, name: FromPath[str]) -> Response[bytes] | Stream:
    ctx = _context(request, name, "jsonrpc")
    return to_response(await runtime_of(request).mediate(ctx))


@route(
    ["/agents/{name:str}/rest/{tail:path}"],
    http_method=["GET", "POST", "DELETE"],
    status_code=200,
)
async def rest_edge(
    request: AnyRequest, name: FromPath[str], tail: FromPath[str]
) -> Response[bytes] | Stream:
    ctx = _context(request, name, "rest", _raw_tail(request, name, tail))
    return to_response(await runtime_of(request).mediate(ctx))


def _raw_tail(request: AnyRequest, name: str, tail: str) -> str:
    """The path after ``/rest`` as the caller sent it (still percent-encoded), for forwarding."""
    raw = request.scope.get("raw_path", b"").decode("latin-1")
    prefix = f"/agents/{name}/rest"
    return raw[len(prefix) :] if raw.startswith(prefix) else tail


_JSONRPC_TAILS = frozenset({"jsonrpc", "jsonrpc/"})
_LLM_CALLS: dict[str, CallKind] = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings"}
_REST_METHODS = frozenset({"GET", "POST", "DELETE"})


class MediationEdges:
    """The ASGI app the server runs: the mediation paths raw, the rest to ``app``.

    ``/agents/{name}/jsonrpc[/]`` (POST), ``/agents/{name}/rest/...`` (GET, POST, DELETE),
    the OpenAI-compatible calls ``/v1/chat/completions`` and ``/v1/embeddings`` (POST), and
    MCP calls ``/mcp`` and ``/mcp/{server}`` (POST), matched as their Litestar routes match
    them; what the runtime needs is read from ``app.state`` once started. ``max_body``: the
    body limit Litestar applies to its routes.
    """

    def __init__(self, app: Any, max_body: int) -> None:
        self.app: ASGIApp = app
        self._state = app.state
        self._max_body = max_body

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith("/agents/"):
                ctx = self._context(scope, receive)
                if ctx is not None:
                    binding = ctx.binding
                    await _answer(
                        self._state.runtime.mediate(ctx),
                        lambda err: error_reply(err, binding, None),
                        scope,
                        receive,
                        send,
                    )
                    return
            elif (kind := _LLM_CALLS.get(path)) is not None and scope["method"] == "POST":
                call = LlmContext(
                    kind=kind,
                    headers=scope_headers(scope["headers"]),
                    read_body=asgi_body_reader(receive, self._max_body, scope["headers"]),
                )
                outcome = self._state.runtime.llm.call(call)
                await _answer(outcome, openai_error_reply, scope, receive, send)
                return
            elif scope["method"] == "POST" and (server := _mcp_server(path)) is not None:
                mcp = self._mcp_context(scope, receive, server)
                await _answer(self._state.runtime.mcp.call(mcp), _mcp_refusal, scope, receive,
                              send)
                return
        await self.app(scope, receive, send)

    def _mcp_context(self, scope: Any, receive: Receive, server: str) -> McpContext:
        raw = scope["headers"]
        return McpContext(
            server_name=server,
            raw_headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw),
            headers=scope_headers(raw),
            read_body=asgi_body_reader(receive, self._max_body, raw),
        )

    def _context(self, scope: Any, receive: Receive) -> MediationContext | None:
        name, _, rest = scope["path"][len("/agents/") :].partition("/")
        if not name:
            return None
        method = scope["method"]
        if rest in _JSONRPC_TAILS and method == "POST":
            binding: Binding = "jsonrpc"
            tail = ""
        elif rest.startswith("rest/") and method in _REST_METHODS:
            binding = "rest"
            tail = _raw_tail_of(scope, name, rest[len("rest") :])
        else:
            return None
        return MediationContext(
            binding=binding,
            target_name=name,
            http_method=method,
            headers=scope_headers(scope["headers"]),
            read_body=asgi_body_reader(receive, self._max_body, scope["headers"]),
            rest_tail=tail,
            query_string=scope.get("query_string", b"").decode("latin-1"),
        )


async def _answer(
    outcome: Awaitable[Outcome],
    on_error: Callable[[BrokerError], Reply],
    scope: Any,
    receive: Receive,
    send: Send,
) -> None:
    """Run a pipeline and send its outcome; what escapes it is answered as Litestar's
    exception handlers would (``on_error``: the surface's error shape)."""
    started = False

    async def tracked(message: Any) -> None:  # a stream's sends: has its answer started?
        nonlocal started
        started = True
        await send(message)

    try:
        result = await outcome
        if isinstance(result, Reply):
            reply = result  # a unary answer: nothing is sent before
        else:
            await send_outcome(result, scope, receive, tracked)
            return
    except BrokerError as err:
        if started:
            raise
        reply = on_error(err)
    except Exception:
        if started:
            raise
        log.exception("unhandled error on %s %s", scope["method"], scope["path"])
        reply = on_error(BrokerInternalError())
    status, headers = reply_head(reply)
    if not sent_whole(send, status, headers, reply.body):
        start, body = unary_messages(status, headers, reply.body)
        await send(start)
        await send(body)


def asgi_body_reader(
    receive: Receive, limit: int, raw_headers: Iterable[tuple[bytes, bytes]]
) -> Callable[[], Awaitable[bytes]]:
    """``body_reader`` on raw ASGI: the body, refused past ``limit`` bytes as Litestar does."""

    body: bytes | None = None

    async def read() -> bytes:
        nonlocal body
        if body is None:  # read once; a stage that asks again gets the same bytes
            body = await _read(receive, limit, raw_headers)
        return body

    return read


async def _read(receive: Receive, limit: int, raw_headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    announced = _content_length(raw_headers)
    if announced is not None and announced > limit:
        raise BodyTooLargeError
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the caller hung up
            raise InvalidRequestError("The request body could not be read.")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLargeError
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _content_length(raw_headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in raw_headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                raise InvalidRequestError("The request body could not be read.") from None
    return None


async def send_outcome(outcome: Outcome, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer ``outcome`` on raw ASGI, with the headers ``to_response`` gets from Litestar."""
    if not isinstance(outcome, Reply):
        # Litestar's own streaming response: it stops the stream when the caller hangs up.
        streaming = ASGIStreamingResponse(
            iterator=outcome.events,
            status_code=outcome.status,
            media_type=_SSE_MEDIA_TYPE,
            headers=dict(outcome.headers),
        )
        await streaming(scope, receive, send)
        return
    start, body = reply_messages(outcome)
    await send(start)
    await send(body)


def reply_messages(reply: Reply) -> tuple[HTTPResponseStartEvent, HTTPResponseBodyEvent]:
    """The two ASGI messages of a unary answer."""
    status, headers = reply_head(reply)
    return unary_messages(status, headers, reply.body)


def unary_messages(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[HTTPResponseStartEvent, HTTPResponseBodyEvent]:
    """The two ASGI messages of ``reply_head``'s status and headers and ``body``."""
    headers.append((b"content-length", str(len(body)).encode("latin-1")))
    return (
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body, "more_body": False},
    )


def reply_head(reply: Reply) -> tuple[int, list[tuple[bytes, bytes]]]:
    """A unary answer's status and headers, all but its content-length."""
    media_type = reply.media_type
    if media_type.startswith("text/") and "charset" not in media_type:
        media_type += "; charset=utf-8"
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in reply.headers.items()
    ]
    headers.append((b"content-type", media_type.encode("latin-1")))
    return reply.status, headers


def _mcp_server(path: str) -> str | None:
    """The MCP server a path names (``VIRTUAL`` for ``/mcp``), as the Litestar routes match;
    None: not an MCP call path."""
    if path == "/mcp":
        return VIRTUAL
    name = path[len("/mcp/") :] if path.startswith("/mcp/") else ""
    return name if name and "/" not in name else None


def _mcp_refusal(err: BrokerError) -> Reply:
    reply = mcp_error_reply(err, None)
    return Reply(reply.status, reply.body, headers=reply.headers)


def _raw_tail_of(scope: Scope, name: str, tail: str) -> str:
    raw = (scope.get("raw_path") or b"").decode("latin-1")
    prefix = f"/agents/{name}/rest"
    return raw[len(prefix) :] if raw.startswith(prefix) else tail


__all__ = ["MediationEdges", "jsonrpc_edge", "rest_edge"]
