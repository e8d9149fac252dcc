"""Broker credentials: how they are made and the digest under which they are stored.

A credential is ``a2ab_`` followed by 256 random bits (base64url). The broker keeps only its
SHA-256 hex digest; the plaintext is shown once, when it is issued.
"""

from __future__ import annotations

import hashlib
import re
import secrets

CREDENTIAL_PREFIX = "a2ab_"
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


def credential_digest(token: str) -> str:
    """The SHA-256 hex digest (lower case) of ``token``, as the credential store holds it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_credential() -> tuple[str, str]:
    """A fresh credential and its digest: ``(plaintext, digest)``."""
    token = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
    return token, credential_digest(token)


def is_credential_digest(value: str) -> bool:
    """True if ``value`` is a lower-case SHA-256 hex digest."""
    return bool(_DIGEST_RE.match(value))
