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
import re
from collections.abc import Mapping
from typing import Literal, TypedDict

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.mcp.errors import McpServerInvalidError
from broker.mcp.servers import HOP_TOKEN_HEADER
from broker.mcp.sessions import derive_seal_key
from broker.settings_mcp import McpCredential

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


# --- what a registration may hold ---------------------------------------------------------------

_MAX_SECRET = 8192
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
# Headers the broker sets itself or that frame the request: a credential may not replace them.
_RESERVED_HEADERS = frozenset({
    "accept", "connection", "content-length", "content-type", "host", "keep-alive",
    "last-event-id", "mcp-method", "mcp-name", "mcp-protocol-version", "mcp-session-id",
    "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", HOP_TOKEN_HEADER,
})


class CredentialFields(TypedDict):
    """How a registration's credential is stored (``McpServerRecord``'s credential fields)."""

    credential_kind: Literal["none", "bearer", "header"]
    credential_header: str
    credential_env: str
    credential_sealed: str
    credential_fingerprint: str


def credential_fields(
    name: str, cred: McpCredential, environ: Mapping[str, str], held: HeldCredentials
) -> CredentialFields:
    """The credential of server ``name`` as it is stored: the secret sealed, or the name of the
    variable holding it. Raises ``McpServerInvalidError`` (``metadata.field`` "credential")
    naming what is wrong and how to fix it; the secret itself is never in the message."""
    if cred.kind == "none":
        if cred.value or cred.env:
            raise _bad_credential(name, "a credential of kind 'none' takes no value or env.")
        return {"credential_kind": "none", "credential_header": "", "credential_env": "",
                "credential_sealed": "", "credential_fingerprint": ""}
    header = _check_header(name, cred.header) if cred.kind == "header" else ""
    if bool(cred.value) == bool(cred.env):
        raise _bad_credential(
            name, "give the secret as 'value', or name the environment variable that holds"
            " it on every replica as 'env' (one of the two).")
    secret = cred.value or _env_secret(name, cred.env, environ)
    if len(secret) > _MAX_SECRET or any(ord(c) < 0x20 or ord(c) == 0x7F for c in secret):
        raise _bad_credential(name, f"the secret must be at most {_MAX_SECRET} characters"
                              " with no control characters (it travels in a header).")
    return {
        "credential_kind": cred.kind, "credential_header": header, "credential_env": cred.env,
        "credential_sealed": held.seal(name, cred.value) if cred.value else "",
        "credential_fingerprint": fingerprint(secret),
    }


def _env_secret(name: str, env: str, environ: Mapping[str, str]) -> str:
    if not _ENV_NAME.fullmatch(env):
        raise _bad_credential(name, "'env' must be an environment variable's name.")
    secret = environ.get(env, "")
    if not secret:
        raise _bad_credential(
            name, f"${env} is not set on this broker: set it on every replica, or give the"
            " secret as 'value'.")
    return secret


def _check_header(name: str, header: str) -> str:
    lower = header.lower()
    if not _HEADER_NAME.fullmatch(header) or lower in _RESERVED_HEADERS \
            or lower.startswith("mcp-param-"):
        raise _bad_credential(
            name, f"{header[:64]!r} cannot carry the credential: give an HTTP header name the"
            " broker does not set itself (e.g. X-API-Key; not Content-Type, Accept, Host,"
            " Mcp-*, A2A-Delegation or hop-by-hop headers).")
    return lower


def _bad_credential(name: str, problem: str) -> McpServerInvalidError:
    return McpServerInvalidError(f"The credential of MCP server {name!r}: {problem}",
                                 metadata={"server": name, "field": "credential"})
