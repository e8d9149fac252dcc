"""Per-hop delegation tokens: what the broker mints on every forward and checks when presented.

A token is a compact JWS (EdDSA, the broker's current key, header ``kid`` and
``typ: a2a-delegation+jwt``) whose payload is a ``DelegationClaims``; agents verify it with the
JWKS. Replicas check their own tokens by the ``bmac`` claim instead (a few µs, not ~100 for
Ed25519): HMAC-SHA256, under a key derived from the signing key, over ``<header segment> "."
<payload without bmac>``; the payload is the msgspec encoding with ``,"bmac":"…"}`` spliced on, so
that input is recovered byte for byte. A claim cannot cover the signature over itself, so this
path checks the signature segment's form only (canonical base64url of exactly 64 bytes, the
length of every Ed25519 signature), not its bits: harmless, since the broker never relays a
presented token (it mints a new one) and the header and claims it acts on are authenticated.

The minter signs with libsodium (PyNaCl) rather than OpenSSL (cryptography): Ed25519 signatures
are deterministic (RFC 8032), so the bytes are the same, and libsodium makes them in about two
thirds of the time (decision 0082). Verification, the JWKS and everything else use cryptography.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable
from typing import Annotated, TypeVar

import msgspec
import nacl.bindings
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.datacontrols.tags import accumulate
from broker.delegation import DELEGATION_TOKEN_TYPE
from broker.delegation.errors import (
    DelegationTokenExpiredError,
    DelegationTokenInvalidError,
    DelegationTokenNotYoursError,
)
from broker.identity.keys import BROKER_ALG, BrokerKeys
from broker.ids import new_id

Clock = Callable[[], float]
_T = TypeVar("_T")

MAX_TOKEN_CHARS = 8192  # a chain deep enough to need more is refused long before
MAX_TAGS = 64  # data-control types: far more than the detector knows
_MAC_LABEL = b"a2a-broker/delegation/bmac/v1"
_BMAC_PREFIX = b',"bmac":"'
_BMAC_CHARS = 43  # base64url of 32 bytes, unpadded
_BMAC_TAIL = len(_BMAC_PREFIX) + _BMAC_CHARS + len(b'"}')
_SIGNATURE_BYTES = 64  # Ed25519


class Actor(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 8693 ``act``: who made a hop, and (nested) the actor before them."""

    sub: str
    act: Actor | None = None


class DelegationClaims(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The payload of a delegation token. For A→B→C the token to C has ``sub`` A,
    ``act`` {B, {A}}, ``chain`` (A, B) and ``depth`` 2; ``parent`` is the jti of B's token."""

    iss: str  # the broker's public URL
    aud: str  # the agent the token was minted for: the only one that may present it
    sub: str  # the chain's origin
    act: Actor  # outermost: the agent that made this hop
    chain: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)]  # callers so far, origin first
    tree: str  # the task tree: minted when work originates, kept along the chain
    parent: str | None = None  # jti of the token the caller presented; None at the origin
    depth: int  # hops so far: 1 for A→B
    scope: str  # space-separated "a2a:<Operation>" and "skill:<id>" allowed for this hop
    jti: str
    iat: int
    exp: int
    dl: float  # the work's deadline (epoch seconds); never after exp
    # Data-control tags: the types of sensitive data the work has touched (pii:email,
    # secret:aws_key; never values), sorted. They only grow along a chain. Omitted when empty.
    tags: tuple[str, ...] = ()
    bmac: str | None = None  # must stay the last field: it is spliced onto the encoding

    @property
    def origin(self) -> str:
        """The agent that originated the work."""
        return self.chain[0]

    @property
    def caller(self) -> str:
        """The agent that made the hop this token was minted for."""
        return self.chain[-1]

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.scope.split())


def hop_scope(operation: str, skills: Iterable[str] = ()) -> tuple[str, ...]:
    """The scope entries for one hop: ``a2a:<operation>`` then ``skill:<id>`` for each skill."""
    return (f"a2a:{operation}", *(f"skill:{skill}" for skill in skills))


class _Header(msgspec.Struct, frozen=True):
    alg: str
    kid: str
    typ: str


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(DelegationClaims)
_HEADER_DECODER = msgspec.json.Decoder(_Header)


class TokenMinter:
    """Mints delegation tokens with the broker's current key. Stateless; safe to share.

    ``default_ttl_s`` (≥ 1) is the lifetime when a call asks for none; ``clock`` returns epoch
    seconds.
    """

    def __init__(
        self, keys: BrokerKeys, issuer: str, default_ttl_s: float, clock: Clock = time.time
    ) -> None:
        self._issuer = issuer
        self._default_ttl_s = _duration(default_ttl_s, 1.0, "a token lifetime")
        self._clock = clock
        self._header = header_segment(keys.kid)
        self._signed_prefix = self._header + b"."
        self._mac = _mac_of_header(bmac_key(keys), self._header)
        # libsodium's form of the same key (seed then public key), made once per minter: the
        # runtime builds one minter per BrokerKeys, so a new signing key gets a new one.
        self._secret_key = sodium_secret_key(keys)

    def mint_origin(
        self,
        caller: str,
        target: str,
        scope: str | Iterable[str],
        deadline_s: float | None = None,
        *,
        ttl_s: float | None = None,
        tags: Iterable[str] = (),
    ) -> tuple[str, DelegationClaims]:
        """A token for ``target`` on a hop where ``caller`` originates new work (a new tree).

        The token lives ``ttl_s`` (default: the minter's), its deadline is ``deadline_s`` from
        now (default: its expiry); it carries ``tags`` (data-control type names). Raises
        ``ValueError`` for a non-positive duration, a bad scope entry or a bad tag.
        """
        now = self._clock()
        limits = _limits(now, self._ttl(ttl_s), deadline_s)
        claims = self._claims(None, caller, target, scope, now=now, limits=limits)
        return self._seal(_with_tags(claims, (), tags))

    def mint_next(
        self,
        parent: DelegationClaims,
        caller: str,
        target: str,
        scope: str | Iterable[str],
        deadline_s: float | None = None,
        *,
        ttl_s: float | None = None,
        tags: Iterable[str] = (),
    ) -> tuple[str, DelegationClaims]:
        """A token for ``target`` on a hop ``caller`` makes while working under ``parent``.

        ``parent`` must be verified claims presented by ``caller``. The chain grows by
        ``caller``, depth by one; ``exp`` and ``dl`` are never later than the parent's; the tags
        are the parent's plus ``tags``, so they never shrink. Raises
        ``DelegationTokenNotYoursError`` if ``caller`` is not the parent's audience and
        ``DelegationTokenExpiredError`` if the parent's time has run out.
        """
        if caller != parent.aud:
            detail = f"{caller!r} extends a token minted for {parent.aud!r}"
            raise DelegationTokenNotYoursError(detail=detail)
        now = self._clock()
        limits = _limits(now, self._ttl(ttl_s), deadline_s, parent.exp, parent.dl)
        if limits[1] <= now:
            raise DelegationTokenExpiredError(detail=f"parent token {parent.jti} has run out")
        claims = self._claims(parent, caller, target, scope, now=now, limits=limits)
        return self._seal(_with_tags(claims, parent.tags, tags))

    def _ttl(self, ttl_s: float | None) -> float:
        return self._default_ttl_s if ttl_s is None else _duration(ttl_s, 1.0, "a token lifetime")

    def _claims(
        self,
        parent: DelegationClaims | None,
        caller: str,
        target: str,
        scope: str | Iterable[str],
        *,
        now: float,
        limits: tuple[int, float],
    ) -> DelegationClaims:
        chain = (caller,) if parent is None else (*parent.chain, caller)
        return DelegationClaims(
            iss=self._issuer,
            aud=target,
            sub=chain[0],
            act=Actor(caller, None if parent is None else parent.act),
            chain=chain,
            tree=new_id() if parent is None else parent.tree,
            parent=None if parent is None else parent.jti,
            depth=len(chain),
            scope=_scope_text(scope),
            jti=new_id(),
            iat=int(now),
            exp=limits[0],
            dl=limits[1],
        )

    def _seal(self, claims: DelegationClaims) -> tuple[str, DelegationClaims]:
        payload = _ENCODER.encode(claims)  # bmac is None, so omitted
        mac = _b64(_mac(self._mac, payload))
        payload = payload[:-1] + _BMAC_PREFIX + mac + b'"}'
        signing_input = self._signed_prefix + _b64(payload)
        # crypto_sign returns the signature followed by the message (PyNaCl binds no detached form).
        signature = nacl.bindings.crypto_sign(signing_input, self._secret_key)[:_SIGNATURE_BYTES]
        token = (signing_input + b"." + _b64(signature)).decode("ascii")
        return token, msgspec.structs.replace(claims, bmac=mac.decode("ascii"))


class TokenVerifier:
    """Checks a token an agent presents. Revocation and killed trees are the caller's to check.

    Order of checks: integrity (MAC, else signature with any published key), issuer, audience,
    then time; so a forged token is ``Invalid`` even if it is also stale or someone else's.
    """

    def __init__(
        self, keys: BrokerKeys, issuer: str, clock: Clock = time.time, leeway_s: float = 0.0
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._clock = clock
        self._leeway_s = leeway_s
        header = header_segment(keys.kid)
        self._header = header.decode("ascii")
        self._mac = _mac_of_header(bmac_key(keys), header)

    def verify_presented(self, token: str, presenter: str) -> DelegationClaims:
        """The claims of ``token``, presented by the authenticated agent ``presenter``.

        Raises ``DelegationTokenInvalidError`` (malformed, forged, bad signature or MAC, wrong
        type or issuer), ``DelegationTokenNotYoursError`` (audience is not ``presenter``) or
        ``DelegationTokenExpiredError`` (``exp`` or ``dl`` passed, beyond the leeway).
        """
        claims = _decode(_DECODER, self._authenticate(token), "claims")
        if claims.iss != self._issuer:
            raise DelegationTokenInvalidError(detail=f"issuer {claims.iss!r}")
        if claims.aud != presenter:
            raise DelegationTokenNotYoursError(detail=f"aud {claims.aud!r}, from {presenter!r}")
        now = self._clock() - self._leeway_s
        if now >= claims.exp or now >= claims.dl:
            raise DelegationTokenExpiredError(detail=f"token {claims.jti} exp {claims.exp}")
        return claims

    def _authenticate(self, token: str) -> bytes:
        """The payload bytes of ``token`` once its integrity is established."""
        header, payload_segment, signature = _segments(token)
        payload = _strict_b64decode(payload_segment)
        if header == self._header and _has_bmac(payload):
            # Every segment is checked: a token is one text, whichever path verifies it.
            if len(_strict_b64decode(signature)) != _SIGNATURE_BYTES:
                raise DelegationTokenInvalidError(detail="the signature segment is not a signature")
            self._check_bmac(payload)
        else:
            self._check_signature(header, payload_segment, signature)
        return payload

    def _check_bmac(self, payload: bytes) -> None:
        """The MAC over the broker's own header (the caller checked the token has it)."""
        unsealed = payload[:-_BMAC_TAIL] + b"}"
        expected = _b64(_mac(self._mac, unsealed))
        if not hmac.compare_digest(expected, payload[-_BMAC_TAIL + len(_BMAC_PREFIX) : -2]):
            raise DelegationTokenInvalidError(detail="bmac does not match")

    def _check_signature(self, header: str, payload_segment: str, signature: str) -> None:
        """JWS EdDSA (RFC 8037): Ed25519 over the ASCII signing input, with a published key."""
        fields = _decode(_HEADER_DECODER, _strict_b64decode(header), "header")
        key = self._keys.public_key(fields.kid)
        if key is None or fields.alg != BROKER_ALG or fields.typ != DELEGATION_TOKEN_TYPE:
            raise DelegationTokenInvalidError(detail="not a delegation token of a published key")
        try:
            key.verify(_strict_b64decode(signature), f"{header}.{payload_segment}".encode())
        except InvalidSignature as exc:
            raise DelegationTokenInvalidError(detail="bad signature") from exc


def _with_tags(
    claims: DelegationClaims, inherited: Iterable[str], added: Iterable[str]
) -> DelegationClaims:
    """``claims`` carrying the union of the inherited and the added tags (ValueError for a tag
    that is not a type name, or more than MAX_TAGS)."""
    tags = accumulate(inherited, added)
    if len(tags) > MAX_TAGS:
        raise ValueError(f"a token carries at most {MAX_TAGS} tags, not {len(tags)}")
    return msgspec.structs.replace(claims, tags=tags) if tags else claims


def header_segment(kid: str) -> bytes:
    """The base64url JOSE header of every token minted with the key ``kid``."""
    header = {"alg": BROKER_ALG, "kid": kid, "typ": DELEGATION_TOKEN_TYPE}
    return _b64(_ENCODER.encode(header))


def bmac_key(keys: BrokerKeys) -> bytes:
    """The MAC key: HKDF-SHA256 of the current signing key's raw bytes, with a fixed label."""
    raw = _raw_private_key(keys)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_MAC_LABEL).derive(raw)


def sodium_secret_key(keys: BrokerKeys) -> bytes:
    """The current signing key as libsodium's 64-byte secret key (seed, then public key).

    ``nacl.bindings.crypto_sign`` under it makes exactly the signature that
    ``keys.private_key.sign`` makes: Ed25519 is deterministic.
    """
    _public, secret = nacl.bindings.crypto_sign_seed_keypair(_raw_private_key(keys))
    return secret


def _raw_private_key(keys: BrokerKeys) -> bytes:
    """The current signing key's 32 raw bytes (the RFC 8032 seed)."""
    return keys.private_key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def _mac_of_header(key: bytes, header: bytes) -> _HeaderMac:
    """The HMAC state after ``<header segment> "."``, copied for each token (cheaper than a
    fresh HMAC over the whole input)."""
    return _HeaderMac(key, header + b".")


_IPAD = bytes(byte ^ 0x36 for byte in range(256))  # RFC 2104's pads, as translation tables
_OPAD = bytes(byte ^ 0x5C for byte in range(256))
_SHA256_BLOCK = 64


class _HeaderMac:
    """HMAC-SHA256 (RFC 2104) of ``prefix`` then a payload: the inner and outer SHA-256
    states, with the key's pads (and the inner one with ``prefix``) absorbed once, copied per
    MAC. The same bytes as ``hmac.new(key, prefix + payload, sha256).digest()``, in C calls
    only (``hmac.HMAC``'s copy, update and digest are Python methods around them)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes, prefix: bytes) -> None:
        if len(key) > _SHA256_BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._inner.update(prefix)
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def digest(self, payload: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def _mac(after_header: _HeaderMac, payload: bytes) -> bytes:
    return after_header.digest(payload)


def _has_bmac(payload: bytes) -> bool:
    tail = payload[-_BMAC_TAIL:]
    return len(payload) > _BMAC_TAIL and tail.startswith(_BMAC_PREFIX) and tail.endswith(b'"}')


def _segments(token: str) -> tuple[str, str, str]:
    parts = token.split(".") if len(token) <= MAX_TOKEN_CHARS else []
    if len(parts) != 3:
        raise DelegationTokenInvalidError(detail="not a compact JWS of bounded size")
    return parts[0], parts[1], parts[2]


def _strict_b64decode(segment: str) -> bytes:
    """Decode base64url, refusing any text that is not the canonical encoding of its bytes."""
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        canonical = _b64(data) == segment.encode("ascii")
    except ValueError as exc:
        raise DelegationTokenInvalidError(detail="a segment is not base64url") from exc
    if not canonical:
        raise DelegationTokenInvalidError(detail="a segment is not canonical base64url")
    return data


def _decode(decoder: msgspec.json.Decoder[_T], data: bytes, what: str) -> _T:
    try:
        return decoder.decode(data)
    except (msgspec.MsgspecError, ValueError) as exc:  # bad UTF-8 raises UnicodeDecodeError
        raise DelegationTokenInvalidError(detail=f"{what}: {exc}") from exc


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> bytes:
    """Unpadded base64url: ``base64.urlsafe_b64encode(data).rstrip(b"=")`` without its two
    Python frames (three encodings per minted token)."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=")


def _limits(
    now: float,
    ttl_s: float,
    deadline_s: float | None,
    parent_exp: int | None = None,
    parent_dl: float | None = None,
) -> tuple[int, float]:
    """``exp`` and ``dl`` for a new token, never later than the parent's; ``dl`` ≤ ``exp``."""
    exp = int(now + ttl_s)  # rounded down: never longer than asked
    if parent_exp is not None:
        exp = min(exp, parent_exp)
    wanted = float(exp) if deadline_s is None else now + _duration(deadline_s, 0.001, "a deadline")
    dl = min(wanted, float(exp))
    if parent_dl is not None:
        dl = min(dl, parent_dl)
    return exp, dl


def _duration(seconds: float, minimum: float, what: str) -> float:
    if not minimum <= seconds < math.inf:  # also refuses NaN
        raise ValueError(f"{what} must be at least {minimum} s and finite, got {seconds!r}")
    return seconds


def _scope_text(scope: str | Iterable[str]) -> str:
    entries = scope.split() if isinstance(scope, str) else list(scope)
    if not entries or any(not entry or entry != "".join(entry.split()) for entry in entries):
        raise ValueError(f"scope entries must be non-empty and without spaces: {entries!r}")
    return " ".join(entries)
