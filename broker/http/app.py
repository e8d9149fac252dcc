"""The Litestar application: routes, error handlers and the runtime's life cycle."""

from __future__ import annotations

import gc
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Response
from litestar.exceptions import HTTPException

from broker.audit.log import AuditLogError
from broker.audit.recorder import AuditRecorder
from broker.audit.replica_id import ReplicaIdError
from broker.console.app import console_parts
from broker.errors import (
    BodyTooLargeError,
    BrokerError,
    BrokerInternalError,
    HTTPMethodNotAllowedError,
    InvalidRequestError,
    RouteNotFoundError,
)
from broker.http.admin import admin_router
from broker.http.alerts import alerts_router
from broker.http.approvals import approvals_router
from broker.http.connections import observe
from broker.http.discovery import agent_card, healthz, jwks, list_agents, readyz
from broker.http.llm import llm_route_handlers
from broker.http.mcp import mcp_route_handlers
from broker.http.mediation import MediationEdges, jsonrpc_edge, rest_edge
from broker.http.state import AnyRequest
from broker.identity.directory import DeclarativeCardError
from broker.identity.keys import KeyFileError
from broker.mcp.wire import error_reply as mcp_error_reply
from broker.observability.logs import configure_logging
from broker.observability.multiprocess import worker_stopped
from broker.observability.scrape import metrics_routes
from broker.policy.rules import PolicyError
from broker.protocols.a2a.wire import error_reply
from broker.protocols.llm.wire import openai_error_reply
from broker.runtime import BrokerRuntime
from broker.settings import Settings, SettingsError, load_settings
from broker.stores.redis_client import REDIS_FAILURES

log = logging.getLogger("a2a_broker")

# ASGI in general (Litestar's own aliases leave out the lifespan scope).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# What a start-up can fail with for reasons outside the code (files, keys, Redis, the audit
# log): logged as one line. Anything else is a bug and is logged with its traceback.
STARTUP_ERRORS = (
    DeclarativeCardError,
    KeyFileError,
    SettingsError,
    PolicyError,
    AuditLogError,
    ReplicaIdError,
    BrokerError,
    *REDIS_FAILURES,  # OSError among them
)


_JSONRPC_PATH = re.compile(r"/agents/[^/]+/jsonrpc/?")


def error_response(request: AnyRequest, err: BrokerError) -> Response[bytes]:
    """An error raised outside the mediation pipeline, in the shape of the surface it hit:
    OpenAI's under ``/v1/``, JSON-RPC on an agent's JSON-RPC URL and on the MCP edge,
    google.rpc.Status elsewhere.

    Reads only the raw ASGI path: the request itself may be what is broken (a bad Host header
    makes its URL unbuildable)."""
    path = str(request.scope.get("path", ""))
    if path.startswith("/v1/"):
        reply = openai_error_reply(err)
    elif path == "/mcp" or path.startswith("/mcp/"):
        answer = mcp_error_reply(err, None)
        return Response(answer.body, status_code=answer.status, media_type="application/json",
                        headers=answer.headers)
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
        except STARTUP_ERRORS as exc:
            _startup_failures.append(_one_line(exc))
            log.error("cannot start: %s", _startup_failures[-1])  # noqa: TRY400 - the story
            raise
        except Exception as exc:
            _startup_failures.append(f"unexpected {type(exc).__name__} (the log has its trace)")
            log.exception("cannot start: unexpected error")  # a bug: keep the traceback
            raise
        settle_heap()
        unobserve = observe(_audit_connections(app.state.runtime.audit))
        log.info("a2a-broker ready at %s (store: %s)", settings.public_url, settings.store.backend)
        try:
            yield
        finally:
            unobserve()
            await app.state.runtime.close()
            worker_stopped()

    console = console_parts(settings)  # the operator console (docs/console.md)
    return Litestar(
        route_handlers=[
            healthz,
            readyz,
            jwks,
            agent_card,
            list_agents,
            jsonrpc_edge,
            rest_edge,
            approvals_router,
            admin_router,
            alerts_router,
            *llm_route_handlers,
            *mcp_route_handlers,
            *metrics_routes(settings.metrics.enabled),
            *console.route_handlers,
        ],
        template_config=console.template_config,
        on_startup=console.on_startup,
        on_shutdown=console.on_shutdown,
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


def _audit_connections(audit: AuditRecorder) -> Callable[[dict[str, int]], None]:
    """Each second in which connections were refused, shed or timed out: one audit record."""

    def record(counts: dict[str, int]) -> None:
        audit.record_soon({"kind": "connections", "caller": "a2a-broker", "detail": counts})

    return record


def app_from_environment() -> MediationEdges:
    """Factory for ``uvicorn --factory``: settings from $A2A_BROKER_CONFIG (each worker).

    The raw edge is outermost, so a mediated request enters no wrapper it does not need; what
    it passes on (the lifespan, every other route) goes through ``QuietStartupFailure``."""
    settings = load_settings()
    configure_logging(settings.server.log_level)
    app = create_app(settings)
    edges = MediationEdges(app, settings.limits.max_body_bytes)
    edges.app = QuietStartupFailure(app)  # type: ignore[assignment]  # plain ASGI aliases
    return edges


class QuietStartupFailure:
    """Passes everything to ``app``, except that a failed start-up is reported without text.

    Litestar reports a failed lifespan start-up with the whole formatted traceback (an
    ExceptionGroup from its task group), which uvicorn logs as one enormous line. The lifespan
    above has already logged the cause in one line, so the report carries no message; uvicorn
    still exits with its start-up failure status (3).
    """

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def quiet(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                message = {**message, "message": ""}
            await send(message)

        await self.app(scope, receive, quiet)


# Why this process's start-up failed, for `a2a-broker serve` to say in one line (one worker:
# uvicorn runs the app in the serve process itself).
_startup_failures: list[str] = []


def startup_failure() -> str | None:
    """The cause of this process's failed start-up, if it failed."""
    return _startup_failures[-1] if _startup_failures else None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
