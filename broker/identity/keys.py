"""Key material: the broker's own Ed25519 signing keys, and the public keys that verify agent cards.

``BrokerKeys`` holds the current signing key plus the public halves of earlier keys, which stay in
the JWKS (``/.well-known/jwks.json``) after a rotation so that tokens and cards signed before it
still verify until they expire. Every key is named by its RFC 7638 JWK thumbprint.

All file reading happens here, once at start-up; problems raise ``KeyFileError`` naming the file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.api_jwk import PyJWK
from jwt.exceptions import PyJWTError

if TYPE_CHECKING:
    from broker.settings import Settings

JWKS_PATH = "/.well-known/jwks.json"
BROKER_ALG = "EdDSA"

# RFC 7638 section 3.2: the members that make up the thumbprint, per key type.
_THUMBPRINT_MEMBERS: dict[str, tuple[str, ...]] = {
    "OKP": ("crv", "kty", "x"),
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")


class KeyFileError(Exception):
    """A key file is missing, unreadable or holds the wrong kind of key; the message names it."""


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url without padding) of a public JWK.

    Raises ``ValueError`` if the key type is unsupported or a required member is missing.
    """
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None or any(not isinstance(jwk.get(m), str) for m in members):
        raise ValueError("JWK lacks the members its thumbprint needs")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def ed25519_public_jwk(key: Ed25519PublicKey) -> dict[str, str]:
    """The public JWK of an Ed25519 key as the broker publishes it (``kid``, ``alg``, ``use``)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii"),
    }
    return {**jwk, "kid": jwk_thumbprint(jwk), "alg": BROKER_ALG, "use": "sig"}


class BrokerKeys:
    """The broker's signing key (current) and the public keys it still publishes (previous).

    ``jwks_url`` is where the JWKS is served; it goes into the ``jku`` header of what the broker
    signs. Instances are immutable after construction and safe to share.
    """

    def __init__(
        self,
        current: Ed25519PrivateKey,
        previous: Sequence[Ed25519PublicKey] = (),
        *,
        jwks_url: str = "",
    ) -> None:
        self._private_key = current
        self._public_jwk = ed25519_public_jwk(current.public_key())
        self._kid = self._public_jwk["kid"]
        self.jwks_url = jwks_url
        self._public_keys: dict[str, Ed25519PublicKey] = {self._kid: current.public_key()}
        self._published = [self._public_jwk]
        for key in previous:
            jwk = ed25519_public_jwk(key)
            if jwk["kid"] not in self._public_keys:
                self._public_keys[jwk["kid"]] = key
                self._published.append(jwk)
        self._signing_jwk = PyJWK(OKPAlgorithm.to_jwk(current, as_dict=True), algorithm=BROKER_ALG)

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerKeys:
        """Load ``[keys] signing_key_file``, or generate an ephemeral key when it is unset."""
        jwks_url = f"{settings.public_url}{JWKS_PATH}"
        if not settings.keys.signing_key_file:
            return cls(Ed25519PrivateKey.generate(), jwks_url=jwks_url)
        key = load_signing_key(settings.path(settings.keys.signing_key_file))
        return cls(key, jwks_url=jwks_url)

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._private_key

    @property
    def kid(self) -> str:
        """The current key's id (its RFC 7638 thumbprint)."""
        return self._kid

    @property
    def signing_jwk(self) -> PyJWK:
        """The current private key as a PyJWK bound to EdDSA (for PyJWT and a2a.utils.signing)."""
        return self._signing_jwk

    def public_jwk(self) -> dict[str, str]:
        """The current key's public JWK."""
        return dict(self._public_jwk)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS to publish: public keys only, the current one first."""
        return {"keys": [dict(jwk) for jwk in self._published]}

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        """The published public key named ``kid`` (current or previous), or None."""
        return self._public_keys.get(kid)

    def sign_jwt(self, claims: Mapping[str, Any], *, typ: str = "JWT") -> str:
        """Sign ``claims`` as a compact JWS with the current key (alg EdDSA, ``kid`` set)."""
        headers = {"kid": self._kid, "typ": typ}
        return jwt.encode(dict(claims), self._private_key, algorithm=BROKER_ALG, headers=headers)

    def decode_jwt(
        self,
        token: str,
        *,
        audience: str | Sequence[str] | None = None,
        issuer: str | None = None,
        required: Sequence[str] = ("exp",),
        leeway: float = 0.0,
    ) -> dict[str, Any]:
        """Verify a JWT signed by any published broker key and return its claims.

        Raises ``jwt.InvalidTokenError`` (or a subclass) if the header names no published key,
        the signature, algorithm, audience, issuer or expiry do not check, or a claim is missing.
        """
        kid = jwt.get_unverified_header(token).get("kid")
        key = self._public_keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise jwt.InvalidTokenError("token is not signed by a published broker key")
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[BROKER_ALG],
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": list(required)},
        )
        return claims


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read an unencrypted PEM (PKCS#8) Ed25519 private key. Raises ``KeyFileError``."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise KeyFileError(f"cannot read signing key file {path}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"signing key file {path} is not an unencrypted PEM key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"signing key file {path} does not hold an Ed25519 private key")
    return key


def generate_signing_key_file(path: Path, *, overwrite: bool = False) -> str:
    """Write a new Ed25519 private key to ``path`` as PEM (mode 0600); return its ``kid``.

    Raises ``FileExistsError`` if the file exists and ``overwrite`` is false.
    """
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    return ed25519_public_jwk(key.public_key())["kid"]


# --- Keys that verify agent cards ---------------------------------------------------------------


def load_verification_keys(paths: Iterable[Path]) -> dict[str, PyJWK]:
    """Public keys by ``kid`` from JWK files (one JWK or a JWKS) and PEM public-key files.

    A JWK without ``kid`` (and every PEM key) is named by its RFC 7638 thumbprint. The algorithm
    is the JWK's ``alg``, else implied by the key: Ed25519 → EdDSA, P-256 → ES256, P-384 → ES384,
    RSA → RS256 (give ``"alg": "PS256"`` in the JWK for RSA-PSS). Raises ``KeyFileError`` for an
    unreadable file, a private key, an unsupported key or a ``kid`` used twice.
    """
    keys: dict[str, PyJWK] = {}
    for path in paths:
        for kid, key in _read_key_file(path):
            if kid in keys:
                raise KeyFileError(f"key file {path}: kid {kid!r} is configured twice")
            keys[kid] = key
    return keys


def _read_key_file(path: Path) -> list[tuple[str, PyJWK]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read key file {path}") from exc
    if text.lstrip().startswith("-----BEGIN"):
        jwks = [_pem_to_jwk(path, text)]
    else:
        jwks = _json_to_jwks(path, text)
    return [_to_pyjwk(path, jwk) for jwk in jwks]


def _pem_to_jwk(path: Path, text: str) -> dict[str, Any]:
    try:
        key = serialization.load_pem_public_key(text.encode("utf-8"))
    except ValueError as exc:
        raise KeyFileError(f"key file {path} is not a PEM public key") from exc
    if isinstance(key, Ed25519PublicKey):
        return OKPAlgorithm.to_jwk(key, as_dict=True)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ECAlgorithm.to_jwk(key, as_dict=True)
    if isinstance(key, rsa.RSAPublicKey):
        return RSAAlgorithm.to_jwk(key, as_dict=True)
    raise KeyFileError(f"key file {path}: unsupported key type")


def _json_to_jwks(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise KeyFileError(f"key file {path} is neither PEM nor JSON") from exc
    found = data.get("keys", [data]) if isinstance(data, dict) else None
    if not isinstance(found, list) or not all(isinstance(k, dict) for k in found):
        raise KeyFileError(f"key file {path} holds neither a JWK nor a JWKS")
    return found


def _to_pyjwk(path: Path, jwk: dict[str, Any]) -> tuple[str, PyJWK]:
    if any(member in jwk for member in _PRIVATE_MEMBERS):
        raise KeyFileError(f"key file {path} holds a private or symmetric key; give the public key")
    try:
        kid = jwk.get("kid") or jwk_thumbprint(jwk)
        return str(kid), PyJWK(jwk)
    except (ValueError, PyJWTError, NotImplementedError) as exc:
        raise KeyFileError(f"key file {path}: unsupported or malformed JWK") from exc
