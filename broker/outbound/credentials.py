"""What proves a request to the upstream agent: the hop token and the credential the broker
holds for that agent. Used by every call the broker sends an agent (mediated or its own)."""

from __future__ import annotations

from broker.delegation import DELEGATION_HEADER
from broker.settings import UpstreamCredential

_DELEGATION_HEADER = DELEGATION_HEADER.lower()


def upstream_auth(cred: UpstreamCredential | None, hop_token: str) -> dict[str, str]:
    """The hop token in A2A-Delegation, and in Authorization either the credential the broker
    holds for that agent or the token itself."""
    headers = {_DELEGATION_HEADER: hop_token} if hop_token else {}
    if cred is not None and cred.value:
        if cred.kind == "bearer":
            headers["authorization"] = f"Bearer {cred.value}"
        else:
            headers[cred.header.lower()] = cred.value
    elif hop_token:
        headers["authorization"] = f"Bearer {hop_token}"
    return headers
