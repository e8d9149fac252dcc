"""The A2A edges: JSON-RPC and HTTP+JSON requests for a registered agent, into the pipeline.

Thin by design: build a MediationContext from the HTTP request, run the pipeline, turn the
outcome into a response. No policy here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from litestar import Response, post, route
from litestar.exceptions import ClientException
from litestar.response import Stream

from broker.errors import BodyTooLargeError, InvalidRequestError
from broker.http.state import AnyRequest, runtime_of
from broker.types import Binding, MediationContext, Outcome, Reply

_SSE_MEDIA_TYPE = "text/event-stream"


def inbound_headers(request: AnyRequest) -> dict[str, str]:
    """Lower-case header names; repeated headers merged with ", " (as A2A-Extensions wants)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in request.scope["headers"]:
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
async def jsonrpc_edge(request: AnyRequest, name: str) -> Response[bytes] | Stream:
    ctx = _context(request, name, "jsonrpc")
    return to_response(await runtime_of(request).mediate(ctx))


@route(
    ["/agents/{name:str}/rest/{tail:path}"],
    http_method=["GET", "POST", "DELETE"],
    status_code=200,
)
async def rest_edge(request: AnyRequest, name: str, tail: str) -> Response[bytes] | Stream:
    ctx = _context(request, name, "rest", _raw_tail(request, name, tail))
    return to_response(await runtime_of(request).mediate(ctx))


def _raw_tail(request: AnyRequest, name: str, tail: str) -> str:
    """The path after ``/rest`` as the caller sent it (still percent-encoded), for forwarding."""
    raw = request.scope.get("raw_path", b"").decode("latin-1")
    prefix = f"/agents/{name}/rest"
    return raw[len(prefix) :] if raw.startswith(prefix) else tail


__all__ = ["jsonrpc_edge", "rest_edge"]
