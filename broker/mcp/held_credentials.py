"""The credentials the broker holds for MCP servers registered at run time, as stored.

A secret given through the admin API is never stored in plain text: it is sealed (AES-256-GCM,
a fresh nonce each time) under a key every replica derives from the same secret the MCP
session ids are sealed with (``[mcp] seal_key_env``, else the broker's signing key), with the
server's name as associated data, so a sealed secret copied onto another server's record does
not open. Reads of a registration show only the credential's kind, header and a fingerprint.
A secret named by ``env`` stays in the environment of every replica (as ``[upstream_credentials]``
and ``[mcp.servers]`` keep theirs) and only the variable's name is stored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.mcp.sessions import derive_seal_key

_VERSION = b"\x01"
_NONCE_BYTES = 12
_PURPOSE = b"a2a-broker mcp credential\x00"
KEY_INFO = b"a2a-broker mcp credential v1"


def fingerprint(secret: str) -> str:
    """What reads show of a secret: enough to tell two apart, far too little to use one.
    An operator checks a token with ``printf %s "$TOKEN" | sha256sum | cut -c1-8``."""
    return "sha256:" + hashlib.sha256(secret.encode("utf-8")).hexdigest()[:8]


class HeldCredentials:
    """Seals and opens the secrets of run-time MCP servers."""

    def __init__(self, seal_secret: bytes) -> None:
        self._aead = AESGCM(derive_seal_key(seal_secret, KEY_INFO))

    def seal(self, server: str, secret: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode("utf-8"), _PURPOSE + server.encode())
        return base64.urlsafe_b64encode(_VERSION + nonce + sealed).decode("ascii")

    def open(self, server: str, sealed: str) -> str | None:
        """The secret, or None if it was not sealed for ``server`` under this broker's key."""
        try:
            raw = base64.urlsafe_b64decode(sealed.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            return None
        if raw[:1] != _VERSION or len(raw) < 1 + _NONCE_BYTES + 16:
            return None
        nonce, body = raw[1:1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, body, _PURPOSE + server.encode()).decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            return None
