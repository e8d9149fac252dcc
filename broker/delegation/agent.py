"""The agent-side delegation helpers, from the ``a2a-broker-agent`` package (``agent_kit/``).

Agents that want only these install ``agent_kit`` (module ``a2a_broker_agent``), which needs
a2a-sdk, PyJWT and httpx and none of the broker's server dependencies. This module re-exports
it so that ``from broker.delegation.agent import ...`` keeps working (decision 0012).
"""

from __future__ import annotations

from a2a_broker_agent import (
    DELEGATION_HEADER,
    DELEGATION_TOKEN_TYPE,
    BrokerJwks,
    BrokerJwksUnavailableError,
    BrokerRefusal,
    BrokerTokenAudienceError,
    BrokerTokenError,
    BrokerTokenExpiredError,
    BrokerTokenInvalidError,
    DelegationCaptureMiddleware,
    DelegationInterceptor,
    broker_refusal,
    capture_delegation,
    current_delegation,
    current_trace_context,
    delegating_http_client,
    delegation_context,
    verify_broker_token,
    with_delegation,
)
from a2a_broker_agent.delegation import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DELEGATION_HEADER",
    "DELEGATION_TOKEN_TYPE",
    "ASGIApp",
    "BrokerJwks",
    "BrokerJwksUnavailableError",
    "BrokerRefusal",
    "BrokerTokenAudienceError",
    "BrokerTokenError",
    "BrokerTokenExpiredError",
    "BrokerTokenInvalidError",
    "DelegationCaptureMiddleware",
    "DelegationInterceptor",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "broker_refusal",
    "capture_delegation",
    "current_delegation",
    "current_trace_context",
    "delegating_http_client",
    "delegation_context",
    "verify_broker_token",
    "with_delegation",
]
