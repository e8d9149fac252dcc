"""The token's MAC and base64url, written with C calls only, are the standard ones byte for byte.

* ``_HeaderMac`` (the inner and outer SHA-256 states with the key's pads absorbed once) gives
  exactly ``hmac.new(key, prefix + payload, sha256)`` for any key (shorter and longer than a
  block), prefix and payload.
* ``_b64`` gives exactly ``base64.urlsafe_b64encode(data).rstrip(b"=")``.
* A minted token's ``bmac`` is the HMAC of the standard library over its header and unsealed
  payload, under the key ``bmac_key`` derives.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from broker.delegation.tokens import (
    TokenMinter,
    _b64,
    _HeaderMac,
    bmac_key,
    header_segment,
)
from broker.identity.keys import BrokerKeys


@given(st.binary(max_size=200), st.binary(max_size=200), st.binary(max_size=2000))
def test_the_header_mac_is_hmac_sha256(key: bytes, prefix: bytes, payload: bytes) -> None:
    mac = _HeaderMac(key, prefix)
    expected = hmac.new(key, prefix + payload, hashlib.sha256).digest()
    assert mac.digest(payload) == expected
    assert mac.digest(payload) == expected  # the kept states are copied, never consumed


@given(data=st.binary(max_size=600))
def test_b64_is_unpadded_urlsafe_base64(data: bytes) -> None:
    assert _b64(data) == base64.urlsafe_b64encode(data).rstrip(b"=")


@given(st.binary(min_size=32, max_size=32), st.from_regex(r"[a-z]{1,12}", fullmatch=True))
def test_a_minted_tokens_bmac_is_the_standard_hmac(seed: bytes, caller: str) -> None:
    keys = BrokerKeys(Ed25519PrivateKey.from_private_bytes(seed))
    token, claims = TokenMinter(keys, "https://broker.example", 60).mint_origin(
        caller, "target", ("a2a:SendMessage",)
    )
    header, payload, _ = token.split(".")
    assert header.encode() == header_segment(keys.kid)
    unsealed = msgspec.json.encode(msgspec.structs.replace(claims, bmac=None))
    expected = hmac.new(bmac_key(keys), header.encode() + b"." + unsealed, hashlib.sha256)
    assert claims.bmac == base64.urlsafe_b64encode(expected.digest()).rstrip(b"=").decode()
    assert base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).endswith(
        f',"bmac":"{claims.bmac}"}}'.encode()
    )
