"""The Litestar application: routes, error handlers and the runtime's life cycle."""

from __future__ import annotations

import gc
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Response
from litestar.exceptions import HTTPException

from broker.directory import DeclarativeCardError
from broker.errors import (
    BodyTooLargeError,
    BrokerError,
    BrokerInternalError,
    HTTPMethodNotAllowedError,
    InvalidRequestError,
    RouteNotFoundError,
)
from broker.http.admin import admin_router
from broker.http.discovery import agent_card, healthz, jwks, list_agents, readyz
from broker.http.mediation import jsonrpc_edge, rest_edge
from broker.http.state import AnyRequest
from broker.keys import KeyFileError
from broker.llm.routes import llm_route_handlers
from broker.llm.wire import openai_error_reply
from broker.logs import configure_logging
from broker.policy.rules import PolicyError
from broker.runtime import BrokerRuntime
from broker.settings import Settings, SettingsError, load_settings
from broker.wire import error_reply

log = logging.getLogger("a2a_broker")


_JSONRPC_PATH = re.compile(r"/agents/[^/]+/jsonrpc/?")


def error_response(request: AnyRequest, err: BrokerError) -> Response[bytes]:
    """An error raised outside the mediation pipeline, in the shape of the surface it hit:
    OpenAI's under ``/v1/``, JSON-RPC on an agent's JSON-RPC URL, google.rpc.Status elsewhere.

    Reads only the raw ASGI path: the request itself may be what is broken (a bad Host header
    makes its URL unbuildable)."""
    path = str(request.scope.get("path", ""))
    if path.startswith("/v1/"):
        reply = openai_error_reply(err)
    elif _JSONRPC_PATH.fullmatch(path):
        reply = error_reply(err, "jsonrpc", None)
    else:
        reply = error_reply(err, "rest", None)
    return Response(
        reply.body, status_code=reply.status, media_type=reply.media_type, headers=reply.headers
    )


def broker_error_response(request: AnyRequest, err: BrokerError) -> Response[bytes]:
    """Errors raised outside the mediation pipeline (admin, discovery, edges)."""
    return error_response(request, err)


def http_error_response(request: AnyRequest, exc: HTTPException) -> Response[bytes]:
    """Litestar's own refusals (unknown path, wrong method, oversized body) as broker errors."""
    by_status: dict[int, BrokerError] = {
        404: RouteNotFoundError(),
        405: HTTPMethodNotAllowedError(),
        413: BodyTooLargeError(),
    }
    err = by_status.get(exc.status_code) or InvalidRequestError("The request is not valid here.")
    return error_response(request, err)


def internal_error_response(request: AnyRequest, exc: Exception) -> Response[bytes]:
    path = request.scope.get("path", "")
    log.error("unhandled error on %s %s", request.scope.get("method"), path, exc_info=exc)
    return error_response(request, BrokerInternalError())


# Young collections this much rarer than Python's default (700): requests allocate and drop many
# short-lived objects; with the start-up heap frozen, each collection stays cheap.
GC_THRESHOLDS = (20_000, 20, 20)


def settle_heap() -> None:
    """Move everything start-up built out of the collector's way (decision 0011).

    The ~100,000 objects of the libraries and the runtime never die, yet every full collection
    walked all of them: 50-100 ms pauses under load, the broker's p99. Frozen, they are never
    scanned again.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def create_app(settings: Settings) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        try:
            app.state.runtime = await BrokerRuntime.start(settings)
        except (DeclarativeCardError, KeyFileError, SettingsError, PolicyError) as exc:
            log.error("cannot start: %s", exc)  # noqa: TRY400 - the message is the whole story
            raise
        settle_heap()
        log.info("a2a-broker ready at %s (store: %s)", settings.public_url, settings.store.backend)
        try:
            yield
        finally:
            await app.state.runtime.close()

    return Litestar(
        route_handlers=[
            healthz,
            readyz,
            jwks,
            agent_card,
            list_agents,
            jsonrpc_edge,
            rest_edge,
            admin_router,
            *llm_route_handlers,
        ],
        lifespan=[lifespan],
        exception_handlers={
            BrokerError: broker_error_response,
            HTTPException: http_error_response,
            Exception: internal_error_response,
        },
        request_max_body_size=settings.limits.max_body_bytes,
        openapi_config=None,
        debug=False,
        logging_config=None,
    )


def app_from_environment() -> Litestar:
    """Factory for ``uvicorn --factory``: settings from $A2A_BROKER_CONFIG (each worker)."""
    settings = load_settings()
    configure_logging(settings.server.log_level)
    return create_app(settings)
