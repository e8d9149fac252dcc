"""a2a-broker-agent: what an a2a-sdk agent behind a2a-broker needs, and nothing of the broker.

* ``capture_delegation(app)``: ASGI wrapper that keeps each request's ``A2A-Delegation`` token.
* ``DelegationInterceptor``: an a2a-sdk client interceptor that presents it on every call.
* ``delegating_http_client``: the same for a plain httpx client (card fetches included).
* ``verify_broker_token``: check that a request came through the broker, for this agent.
* ``broker_refusal``: the broker's reason behind an a2a-sdk client error (HTTP+JSON).

It imports only a2a-sdk, PyJWT, httpx and the standard library. The broker re-exports all of it
as ``broker.delegation.agent``.
"""

from __future__ import annotations

from a2a_broker_agent.delegation import (
    BrokerJwks,
    BrokerJwksUnavailableError,
    BrokerTokenAudienceError,
    BrokerTokenError,
    BrokerTokenExpiredError,
    BrokerTokenInvalidError,
    DelegationCaptureMiddleware,
    DelegationInterceptor,
    capture_delegation,
    current_delegation,
    current_trace_context,
    delegating_http_client,
    delegation_context,
    verify_broker_token,
    with_delegation,
)
from a2a_broker_agent.headers import DELEGATION_HEADER, DELEGATION_TOKEN_TYPE
from a2a_broker_agent.refusals import BrokerRefusal, broker_refusal

__version__ = "0.1.0"

__all__ = [
    "DELEGATION_HEADER",
    "DELEGATION_TOKEN_TYPE",
    "BrokerJwks",
    "BrokerJwksUnavailableError",
    "BrokerRefusal",
    "BrokerTokenAudienceError",
    "BrokerTokenError",
    "BrokerTokenExpiredError",
    "BrokerTokenInvalidError",
    "DelegationCaptureMiddleware",
    "DelegationInterceptor",
    "broker_refusal",
    "capture_delegation",
    "current_delegation",
    "current_trace_context",
    "delegating_http_client",
    "delegation_context",
    "verify_broker_token",
    "with_delegation",
]
