"""Delegation context: per-hop tokens the broker mints, and the helpers agents use to pass them on.

* ``broker.delegation.tokens``: ``TokenMinter`` and ``TokenVerifier`` (broker side).
* ``broker.delegation.errors``: the refusals they raise (``BrokerError`` subclasses).
* ``broker.delegation.agent``: helpers for agents built with a2a-sdk. It imports only a2a-sdk,
  PyJWT, httpx and the standard library, so an agent can use it without the broker's server code.

This module imports nothing, so that importing ``broker.delegation.agent`` stays light.
"""

from __future__ import annotations

# The HTTP header that carries a delegation token, in both directions: broker → agent on every
# forwarded request, agent → broker when the agent calls another agent for the same work.
DELEGATION_HEADER = "A2A-Delegation"
# The JOSE ``typ`` of a delegation token, so no other JWT the broker signs can pass for one.
DELEGATION_TOKEN_TYPE = "a2a-delegation+jwt"  # noqa: S105 (a media type, not a secret)

__all__ = ["DELEGATION_HEADER", "DELEGATION_TOKEN_TYPE"]
