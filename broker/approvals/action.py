"""The digest an approval is bound to: the exact action, so an approval for one call never
lets another through (another target, operation, body or chain gives another digest)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec

_CANONICAL = msgspec.json.Encoder(order="sorted")


def action_digest(
    *,
    protocol: str,
    target: str,
    operation: str,
    body: bytes,
    chain: Sequence[str],
    where: str = "",
) -> str:
    """SHA-256 hex of the canonical JSON of what the call does: ``where`` is the rest of its
    address (binding, HTTP method, path, query), ``body`` is hashed as it was received."""
    action = {
        "protocol": protocol,
        "target": target,
        "operation": operation,
        "where": where,
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "chain": list(chain),
    }
    return hashlib.sha256(_CANONICAL.encode(action)).hexdigest()
