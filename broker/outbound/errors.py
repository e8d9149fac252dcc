"""The one table that turns transport failures into broker errors.

Every outbound failure passes here once: ``transport_error`` reads what aiohttp, the OS or
the lean client (its exceptions below) raised as one of the broker's upstream errors (the
original text goes to ``detail``, log only); the callers that speak of something other than
an agent then re-name those errors in their own terms, from the tables below: an LLM
provider's (``provider_error``) and a card fetch's (``card_fetch_error``). Nothing else in
the broker inspects an aiohttp exception.
"""

from __future__ import annotations

import aiohttp

from broker.errors import (
    AgentCardFetchError,
    BrokerError,
    EgressDeniedError,
    StreamIdleTimeoutError,
    UpstreamBadResponseError,
    UpstreamConnectTimeoutError,
    UpstreamPoolExhaustedError,
    UpstreamResponseTooLargeError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from broker.llm.errors import LlmProviderError, LlmProviderTimeoutError
from broker.outbound.egress import EgressRefusedOSError


class UpstreamClosedError(ConnectionError):
    """The upstream closed or reset the connection before any byte of an answer (the lean
    client's ServerDisconnectedError): the request may or may not have reached it."""

    def __init__(self, cause: BaseException | None = None) -> None:
        super().__init__(f"the upstream closed the connection ({cause or 'end of stream'})")


class MalformedResponseError(ValueError):
    """The lean client read an answer that is not HTTP/1.1, or that ended before its end."""


class ConnectTimeoutError(TimeoutError):
    """The lean client could not open a connection within upstream_connect_timeout_s."""


class PoolTimeoutError(ConnectTimeoutError):
    """Every pooled connection stayed in use for upstream_connect_timeout_s."""


# What aiohttp, the lean client (``broker.outbound.http11``), the OS or asyncio raise while
# talking to an upstream.
CLIENT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, MalformedResponseError)


def transport_error(exc: BaseException, *, streaming: bool = False) -> BrokerError:
    """The broker error for an aiohttp or OS error raised while talking to an upstream.

    ``streaming``: it came while reading a stream's body, where a read timeout means idleness.
    """
    detail = f"{type(exc).__name__}: {exc}"
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    if isinstance(cause, EgressRefusedOSError):
        return cause.refusal
    if isinstance(exc, PoolTimeoutError):
        return UpstreamPoolExhaustedError(detail=detail)
    if isinstance(exc, aiohttp.ConnectionTimeoutError | ConnectTimeoutError):
        return UpstreamConnectTimeoutError(detail=detail)
    if isinstance(exc, TimeoutError):
        return (
            StreamIdleTimeoutError(detail=detail)
            if streaming
            else UpstreamTimeoutError(detail=detail)
        )
    if isinstance(
        exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError | MalformedResponseError
    ):
        return UpstreamBadResponseError(detail=detail)
    return UpstreamUnreachableError(detail=detail)


# An upstream error as the LLM endpoint names it (the A2A ones speak of agents).
_PROVIDER: tuple[tuple[tuple[type[BrokerError], ...], type[BrokerError]], ...] = (
    ((UpstreamConnectTimeoutError, UpstreamTimeoutError, StreamIdleTimeoutError),
     LlmProviderTimeoutError),
    ((UpstreamUnreachableError, UpstreamBadResponseError, UpstreamResponseTooLargeError,
      EgressDeniedError), LlmProviderError),
)  # fmt: skip
# Upstream errors a card fetch reports as AGENT_CARD_FETCH_FAILED; egress refusals stay.
_CARD_FAILURES = (
    UpstreamUnreachableError,
    UpstreamConnectTimeoutError,
    UpstreamTimeoutError,
    UpstreamBadResponseError,
)


def provider_error(err: BrokerError) -> BrokerError:
    """The LLM endpoint's error for an outbound failure; other errors unchanged."""
    for kinds, named in _PROVIDER:
        if isinstance(err, kinds):
            return named(detail=err.detail or err.reason)
    return err


def card_fetch_error(err: BrokerError) -> BrokerError:
    """A card fetch's error for an outbound failure; other errors (egress) unchanged."""
    if not isinstance(err, _CARD_FAILURES):
        return err
    reason = err.message[:1].lower() + err.message[1:]
    return AgentCardFetchError(f"The agent card could not be fetched: {reason}", detail=err.detail)
