"""The minter signs with libsodium (PyNaCl); every verifier of the tokens uses cryptography/PyJWT.

* For any key and any message, libsodium's Ed25519 signature is byte for byte cryptography's
  (Ed25519 is deterministic, RFC 8032), so switching the signer changes no token.
* A token minted under random keys, parties, scopes and tags is exactly the token that
  cryptography's ``sign`` gives for its signing input, and it verifies everywhere it is read: the
  broker's MAC path, its signature path (the key as a previous key), PyJWT with the JWKS, and the
  agent kit's ``verify_broker_token``.
* A minter built on a new key signs with the new key only.
"""

from __future__ import annotations

import asyncio
import base64

import jwt
import nacl.bindings
import pytest
from a2a_broker_agent.delegation import verify_broker_token
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from broker.delegation.tokens import TokenMinter, TokenVerifier, sodium_secret_key
from broker.identity.keys import BrokerKeys

ISSUER = "https://broker.example"

seeds = st.binary(min_size=32, max_size=32)
names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24)
scopes = st.lists(
    st.from_regex(r"(a2a|skill):[A-Za-z0-9_.-]{1,12}", fullmatch=True), min_size=1, max_size=4
)
tags = st.lists(st.sampled_from(["pii:email", "pii:card", "secret:jwt", "secret:aws_key"]))


def keys_of(seed: bytes) -> BrokerKeys:
    return BrokerKeys(Ed25519PrivateKey.from_private_bytes(seed))


def b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@given(seed=seeds, message=st.binary(max_size=4096))
def test_libsodium_signs_exactly_what_cryptography_signs(seed: bytes, message: bytes) -> None:
    keys = keys_of(seed)
    secret = sodium_secret_key(keys)
    public = keys.private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert secret == seed + public
    signature = nacl.bindings.crypto_sign(message, secret)[:64]
    assert signature == keys.private_key.sign(message)
    keys.private_key.public_key().verify(signature, message)


@given(seed=seeds, parties=st.lists(names, min_size=3, max_size=3), scope=scopes, found=tags)
def test_a_minted_token_is_cryptographys_token_and_verifies_everywhere(
    seed: bytes, parties: list[str], scope: list[str], found: list[str]
) -> None:
    origin, middle, last = parties
    keys = keys_of(seed)
    minter = TokenMinter(keys, ISSUER, 300)
    _, parent = minter.mint_origin(origin, middle, scope, tags=found)
    token, claims = minter.mint_next(parent, middle, last, scope, tags=found)

    signing_input, _, signature = token.rpartition(".")
    assert b64decode(signature) == keys.private_key.sign(signing_input.encode("ascii"))

    assert TokenVerifier(keys, ISSUER).verify_presented(token, last) == claims  # MAC path
    rotated = BrokerKeys(Ed25519PrivateKey.generate(), [keys.private_key.public_key()])
    assert TokenVerifier(rotated, ISSUER).verify_presented(token, last) == claims  # signature
    jwk = jwt.PyJWKSet.from_dict(keys.jwks())[keys.kid]
    decoded = jwt.decode(token, jwk, algorithms=["EdDSA"], audience=last, issuer=ISSUER)
    assert decoded["jti"] == claims.jti and decoded["chain"] == [origin, middle]
    kit = asyncio.run(verify_broker_token(token, keys.jwks(), last, ISSUER))
    assert kit == decoded


def test_a_minter_on_a_new_key_signs_with_the_new_key() -> None:
    old, new = BrokerKeys(Ed25519PrivateKey.generate()), BrokerKeys(Ed25519PrivateKey.generate())
    token, _ = TokenMinter(new, ISSUER, 300).mint_origin("A", "B", "a2a:SendMessage")

    signing_input, _, signature = token.rpartition(".")
    new.private_key.public_key().verify(b64decode(signature), signing_input.encode("ascii"))
    with pytest.raises(InvalidSignature):
        old.private_key.public_key().verify(b64decode(signature), signing_input.encode("ascii"))
    assert jwt.get_unverified_header(token)["kid"] == new.kid != old.kid
