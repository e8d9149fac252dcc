"""MCP sessions and list cursors, sealed to the caller and the server (decision 0047).

An MCP server that holds sessions names one in the ``Mcp-Session-Id`` header of its
``initialize`` answer, and the client sends it back on every later request. The broker never
hands the server's id to the caller: it gives a *sealed* id instead, an AES-GCM token whose
associated data binds it to the authenticated caller and the target (a server, or the virtual
server), holding the upstream id(s) and the negotiated protocol version(s). A token presented
by another caller, for another target, altered, or older than the session lifetime does not
open (``McpSessionNotFoundError``, HTTP 404, on which MCP clients start a new session). Every
replica holding the same key opens every token, so sessions need no shared state.

List cursors are sealed the same way (bound to caller, target and list method), so a caller
cannot forge a server's cursor to walk its lists, nor replay another caller's.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.mcp.errors import (
    McpCursorInvalidError,
    McpHeaderMismatchError,
    McpSessionNotFoundError,
    McpSessionRequiredError,
)

_VERSION = b"\x01"
_NONCE_BYTES = 12
_CLOCK_SKEW_S = 5.0
_MAX_TOKEN_CHARS = 4096
_SESSION = b"mcp-session"
_CURSOR = b"mcp-cursor"


def derive_seal_key(secret: bytes, info: bytes = b"a2a-broker mcp seal v1") -> bytes:
    """A 256-bit key derived from a broker secret (every replica derives the same); ``info``
    keeps the keys of different purposes apart."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info)
    return hkdf.derive(secret)


class Sealer:
    """Authenticated encryption of small payloads bound to a purpose and context strings.

    ``keys[0]`` seals; every key opens, so a key can be rotated without ending live sessions.
    """

    def __init__(self, keys: Sequence[bytes], clock: Callable[[], float] = time.time) -> None:
        if not keys or any(len(k) != 32 for k in keys):
            raise ValueError("sealing keys are 32 bytes each, at least one")
        self._aeads = [AESGCM(k) for k in keys]
        self._clock = clock

    def seal(self, purpose: bytes, context: Sequence[str], payload: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        stamped = msgspec.json.encode([int(self._clock()), payload.decode("utf-8")])
        sealed = self._aeads[0].encrypt(nonce, stamped, _associated(purpose, context))
        return base64.urlsafe_b64encode(_VERSION + nonce + sealed).rstrip(b"=").decode("ascii")

    def open(
        self, purpose: bytes, context: Sequence[str], token: str, max_age_s: float
    ) -> bytes | None:
        """The payload, or None if the token is not one this sealer made for this context, or
        is older than ``max_age_s``."""
        raw = _unb64(token)
        if raw is None or raw[:1] != _VERSION or len(raw) < 1 + _NONCE_BYTES + 16:
            return None
        nonce, sealed = raw[1:1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES:]
        aad = _associated(purpose, context)
        for aead in self._aeads:
            try:
                issued, payload = msgspec.json.decode(aead.decrypt(nonce, sealed, aad))
            except InvalidTag:
                continue
            age = self._clock() - issued
            # A token from a replica whose clock runs a little ahead is still fresh.
            fresh = -_CLOCK_SKEW_S <= age <= max_age_s
            return payload.encode("utf-8") if fresh else None
        return None


def _associated(purpose: bytes, context: Sequence[str]) -> bytes:
    # Length-prefixed, so ("ab", "c") and ("a", "bc") bind differently.
    parts = [purpose, *(c.encode("utf-8") for c in context)]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def _unb64(token: str) -> bytes | None:
    if not token or len(token) > _MAX_TOKEN_CHARS or not token.isascii():
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    # One spelling per token: the unused low bits of the last character must be zero, so no
    # altered string opens as the same token.
    canonical = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return raw if canonical == token else None


# --- sessions ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpstreamSession:
    """One MCP server's side of a session: its own session id ("" when it holds none) and the
    protocol version negotiated with it."""

    session_id: str
    protocol_version: str
    # The server's epoch when the session opened (run-time servers; decision 0070).
    epoch: str = ""


def check_session_version(session: UpstreamSession, sent: str | None) -> None:
    """A request in a session runs under the protocol version negotiated when it opened; an
    MCP-Protocol-Version header naming another is refused (``McpHeaderMismatchError``)."""
    if sent is not None and session.protocol_version and sent != session.protocol_version:
        raise McpHeaderMismatchError(
            f"This session speaks MCP {session.protocol_version}; the MCP-Protocol-Version"
            " header names another.", metadata={"header": "mcp-protocol-version"})


class _SessionPayload(msgspec.Struct, array_like=True):
    # name -> [session id, protocol version, epoch]; no epoch (configured servers): two.
    upstreams: dict[str, list[str]]


class SessionSeal:
    """Issues and opens the ``Mcp-Session-Id`` values the broker gives callers."""

    def __init__(self, sealer: Sealer, ttl_s: float) -> None:
        self._sealer = sealer
        self._ttl_s = ttl_s

    def issue(self, caller: str, target: str, upstreams: Mapping[str, UpstreamSession]) -> str:
        payload = _SessionPayload({k: [v.session_id, v.protocol_version, v.epoch][:3 if v.epoch
                                                                                  else 2]
                                   for k, v in upstreams.items()})
        return self._sealer.seal(_SESSION, (caller, target), msgspec.json.encode(payload))

    def open_from(
        self, caller: str, target: str, token: str | None, *, required: bool
    ) -> dict[str, UpstreamSession]:
        """The upstream sessions of a request's ``Mcp-Session-Id`` (``token``), none when it has
        none. Raises ``McpSessionRequiredError`` when ``required`` (a target that holds sessions,
        such as the virtual server, in a handshake-era request) and it has none."""
        if not token:
            if required:
                raise McpSessionRequiredError()
            return {}
        return self.open(caller, target, token)

    def open(self, caller: str, target: str, token: str) -> dict[str, UpstreamSession]:
        """The upstream sessions behind ``token``. Raises ``McpSessionNotFoundError`` when it was
        not issued to ``caller`` for ``target`` or has expired."""
        raw = self._sealer.open(_SESSION, (caller, target), token, self._ttl_s)
        if raw is None:
            raise McpSessionNotFoundError()
        payload = msgspec.json.decode(raw, type=_SessionPayload)
        return {k: UpstreamSession(*v[:3]) for k, v in payload.upstreams.items() if len(v) >= 2}


# --- cursors -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CursorPosition:
    """Where the next page starts: the server to ask (for the virtual server, which of its
    servers) and that server's own cursor ("" = its first page)."""

    server: str
    upstream_cursor: str


class CursorSeal:
    """Issues and opens the ``nextCursor`` values the broker gives callers."""

    def __init__(self, sealer: Sealer, ttl_s: float) -> None:
        self._sealer = sealer
        self._ttl_s = ttl_s

    def issue(self, caller: str, target: str, method: str, position: CursorPosition) -> str:
        payload = msgspec.json.encode([position.server, position.upstream_cursor])
        return self._sealer.seal(_CURSOR, (caller, target, method), payload)

    def open(self, caller: str, target: str, method: str, cursor: str) -> CursorPosition:
        """Raises ``McpCursorInvalidError`` for a cursor not issued to ``caller`` for this list."""
        raw = self._sealer.open(_CURSOR, (caller, target, method), cursor, self._ttl_s)
        if raw is None:
            raise McpCursorInvalidError()
        server, upstream = msgspec.json.decode(raw, type=tuple[str, str])
        return CursorPosition(server, upstream)
