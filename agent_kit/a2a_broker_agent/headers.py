"""The names a broker and its agents agree on. Imports nothing."""

from __future__ import annotations

# The HTTP header that carries a delegation token, in both directions: broker → agent on every
# forwarded request, agent → broker when the agent calls another agent for the same work.
DELEGATION_HEADER = "A2A-Delegation"
# The JOSE ``typ`` of a delegation token, so no other JWT the broker signs can pass for one.
DELEGATION_TOKEN_TYPE = "a2a-delegation+jwt"  # noqa: S105 (a media type, not a secret)

__all__ = ["DELEGATION_HEADER", "DELEGATION_TOKEN_TYPE"]
