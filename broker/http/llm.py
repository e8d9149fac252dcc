"""The OpenAI-compatible routes: thin, like the A2A edges. The lead registers them in
``create_app`` and puts an ``LlmGateway`` on the runtime as ``runtime.llm``."""

from __future__ import annotations

from typing import cast

from litestar import Response, get, post
from litestar.response import Stream

from broker.http.mediation import body_reader, inbound_headers, to_response
from broker.http.state import AnyRequest
from broker.llm.context import CallKind, LlmContext
from broker.pipeline.llm import LlmGateway


def gateway_of(request: AnyRequest) -> LlmGateway:
    return cast("LlmGateway", request.app.state.runtime.llm)


async def _call(request: AnyRequest, kind: CallKind) -> Response[bytes] | Stream:
    ctx = LlmContext(kind=kind, headers=inbound_headers(request), read_body=body_reader(request))
    return to_response(await gateway_of(request).call(ctx))


@post(["/v1/chat/completions"], status_code=200)
async def chat_completions(request: AnyRequest) -> Response[bytes] | Stream:
    return await _call(request, "chat")


@post(["/v1/embeddings"], status_code=200)
async def embeddings(request: AnyRequest) -> Response[bytes] | Stream:
    return await _call(request, "embeddings")


@get(["/v1/models"], status_code=200)
async def list_models(request: AnyRequest) -> Response[bytes] | Stream:
    reply = await gateway_of(request).models(request.headers.get("authorization"))
    return to_response(reply)


llm_route_handlers = [chat_completions, embeddings, list_models]

__all__ = ["chat_completions", "embeddings", "list_models", "llm_route_handlers"]
