"""Delegation context: per-hop tokens the broker mints, and the helpers agents use to pass them on.

* ``broker.delegation.tokens``: ``TokenMinter`` and ``TokenVerifier`` (broker side).
* ``broker.delegation.errors``: the refusals they raise (``BrokerError`` subclasses).
* ``broker.delegation.agent``: helpers for agents built with a2a-sdk, re-exported from the
  ``a2a-broker-agent`` package (``agent_kit/``), which agents can install without the broker.

The header names come from that package, so broker and agents cannot disagree on them.
"""

from __future__ import annotations

from a2a_broker_agent.headers import DELEGATION_HEADER, DELEGATION_TOKEN_TYPE

__all__ = ["DELEGATION_HEADER", "DELEGATION_TOKEN_TYPE"]
