"""The Litestar application: routes, error handlers and the runtime's life cycle."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from litestar import Litestar, Response
from litestar.exceptions import HTTPException

from broker.audit_runtime import AuditRecorder
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
from broker.http.connections import observe
from broker.http.discovery import agent_card, healthz, jwks, list_agents, readyz
from broker.http.mediation import jsonrpc_edge, rest_edge
from broker.http.state import AnyRequest
from broker.keys import KeyFileError
from broker.llm.routes import llm_route_handlers
from broker.logs import configure_logging
from broker.runtime import BrokerRuntime
from broker.settings import Settings, SettingsError, load_settings
from broker.wire import error_headers, rest_error_body

log = logging.getLogger("a2a_broker")


def broker_error_response(_: AnyRequest, err: BrokerError) -> Response[bytes]:
    """Errors raised outside the mediation pipeline (admin, discovery) in the REST shape."""
    return Response(
        rest_error_body(err),
        status_code=err.http_status,
        media_type="application/json",
        headers=error_headers(err),
    )


def http_error_response(request: AnyRequest, exc: HTTPException) -> Response[bytes]:
    """Litestar's own refusals (unknown path, wrong method, oversized body) as broker errors."""
    by_status: dict[int, BrokerError] = {
        404: RouteNotFoundError(),
        405: HTTPMethodNotAllowedError(),
        413: BodyTooLargeError(),
    }
    err = by_status.get(exc.status_code) or InvalidRequestError("The request is not valid here.")
    return broker_error_response(request, err)


def internal_error_response(request: AnyRequest, exc: Exception) -> Response[bytes]:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return broker_error_response(request, BrokerInternalError())


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
        except (DeclarativeCardError, KeyFileError, SettingsError) as exc:
            log.error("cannot start: %s", exc)  # noqa: TRY400 - the message is the whole story
            raise
        settle_heap()
        unobserve = observe(_audit_connections(app.state.runtime.audit))
        log.info("a2a-broker ready at %s (store: %s)", settings.public_url, settings.store.backend)
        try:
            yield
        finally:
            unobserve()
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


def _audit_connections(audit: AuditRecorder) -> Callable[[dict[str, int]], None]:
    """Each second in which connections were refused, shed or timed out: one audit record."""

    def record(counts: dict[str, int]) -> None:
        audit.record_soon({"kind": "connections", "caller": "a2a-broker", "detail": counts})

    return record


def app_from_environment() -> Litestar:
    """Factory for ``uvicorn --factory``: settings from $A2A_BROKER_CONFIG (each worker)."""
    settings = load_settings()
    configure_logging(settings.server.log_level)
    return create_app(settings)
