"""Delegation tokens: what the broker mints on each hop, and what it accepts when one comes back."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.delegation import DELEGATION_TOKEN_TYPE
from broker.delegation.errors import (
    DelegationRequiredError,
    DelegationTokenExpiredError,
    DelegationTokenInvalidError,
    DelegationTokenNotYoursError,
    DelegationTokenRevokedError,
)
from broker.delegation.tokens import (
    DelegationClaims,
    TokenMinter,
    TokenVerifier,
    header_segment,
    hop_scope,
)
from broker.errors import BrokerError, all_error_types
from broker.identity.keys import BrokerKeys

ISSUER = "https://broker.example"
T0 = 1_800_000_000.25


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def keys() -> BrokerKeys:
    return BrokerKeys(Ed25519PrivateKey.generate())


@pytest.fixture
def minter(keys: BrokerKeys, clock: FakeClock) -> TokenMinter:
    return TokenMinter(keys, ISSUER, default_ttl_s=300, clock=clock)


@pytest.fixture
def verifier(keys: BrokerKeys, clock: FakeClock) -> TokenVerifier:
    return TokenVerifier(keys, ISSUER, clock=clock)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def payload_of(token: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(unb64(token.split(".")[1]))
    return result


def as_json(claims: DelegationClaims) -> dict[str, Any]:
    """The claims as a JSON object, in the order the broker writes them."""
    result: dict[str, Any] = json.loads(msgspec.json.encode(claims))
    return result


def signed_by(key: Ed25519PrivateKey, kid: str, payload: dict[str, Any]) -> str:
    """A token over ``payload`` signed by ``key`` with the header the broker uses for ``kid``."""
    body = json.dumps(payload, separators=(",", ":")).encode()  # compact, as the broker writes
    signing_input = header_segment(kid) + b"." + b64(body).encode()
    return f"{signing_input.decode()}.{b64(key.sign(signing_input))}"


# --- minting and the chain ----------------------------------------------------------------------


def test_round_trip_returns_exactly_the_minted_claims(
    minter: TokenMinter, verifier: TokenVerifier
) -> None:
    token, claims = minter.mint_origin("A", "B", hop_scope("SendMessage", ["research"]), 60)

    assert verifier.verify_presented(token, "B") == claims
    assert claims.scope == "a2a:SendMessage skill:research"
    assert (claims.sub, claims.chain, claims.depth, claims.parent) == ("A", ("A",), 1, None)
    assert (claims.origin, claims.caller) == ("A", "A")
    assert claims.iat == int(T0) and claims.exp == int(T0 + 300) and claims.dl == T0 + 60


def test_tokens_are_standard_jwts_that_pyjwt_verifies_with_the_jwks(
    keys: BrokerKeys, minter: TokenMinter
) -> None:
    token, claims = minter.mint_origin("A", "B", ["a2a:SendMessage"])

    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "kid": keys.kid, "typ": DELEGATION_TOKEN_TYPE}
    jwk = jwt.PyJWKSet.from_dict(keys.jwks())[keys.kid]
    decoded = jwt.decode(
        token,
        jwk,
        algorithms=["EdDSA"],
        audience="B",
        options={"verify_exp": False, "verify_iat": False},  # the fake clock is in 2027
    )
    assert decoded == as_json(claims)
    assert list(decoded)[-1] == "bmac"


def test_a_chain_a_b_c_nests_actors_and_lists_callers(
    minter: TokenMinter, verifier: TokenVerifier
) -> None:
    to_b, claims_b = minter.mint_origin("A", "B", ["a2a:SendMessage"])
    presented = verifier.verify_presented(to_b, "B")
    to_c, claims_c = minter.mint_next(presented, "B", "C", ["a2a:SendMessage", "skill:write"])

    seen_by_c = payload_of(to_c)
    assert seen_by_c["sub"] == "A" and seen_by_c["aud"] == "C"
    assert seen_by_c["act"] == {"sub": "B", "act": {"sub": "A"}}
    assert seen_by_c["chain"] == ["A", "B"]
    assert seen_by_c["depth"] == 2
    assert seen_by_c["parent"] == claims_b.jti
    assert seen_by_c["tree"] == claims_b.tree
    assert seen_by_c["scope"] == "a2a:SendMessage skill:write"
    assert (claims_c.origin, claims_c.caller) == ("A", "B")
    assert verifier.verify_presented(to_c, "C") == claims_c


def test_a_third_hop_nests_one_actor_deeper(minter: TokenMinter) -> None:
    _, to_b = minter.mint_origin("A", "B", "a2a:SendMessage")
    _, to_c = minter.mint_next(to_b, "B", "C", "a2a:SendMessage")
    token, to_d = minter.mint_next(to_c, "C", "D", "a2a:GetTask")

    assert payload_of(token)["act"] == {"sub": "C", "act": {"sub": "B", "act": {"sub": "A"}}}
    assert to_d.chain == ("A", "B", "C") and to_d.depth == 3 and to_d.sub == "A"


def test_a_child_never_outlives_its_parent(minter: TokenMinter, clock: FakeClock) -> None:
    _, parent = minter.mint_origin("A", "B", "a2a:SendMessage", deadline_s=30, ttl_s=60)
    clock.now += 10

    _, child = minter.mint_next(parent, "B", "C", "a2a:SendMessage", deadline_s=500, ttl_s=900)

    assert child.exp == parent.exp and child.dl == parent.dl
    _, shorter = minter.mint_next(parent, "B", "C", "a2a:SendMessage", deadline_s=5)
    assert shorter.dl == clock.now + 5 and shorter.exp == parent.exp


def test_only_the_parents_audience_can_extend_it(minter: TokenMinter) -> None:
    _, parent = minter.mint_origin("A", "B", "a2a:SendMessage")
    with pytest.raises(DelegationTokenNotYoursError):
        minter.mint_next(parent, "C", "D", "a2a:SendMessage")


def test_a_parent_whose_deadline_has_passed_cannot_be_extended(
    minter: TokenMinter, clock: FakeClock
) -> None:
    _, parent = minter.mint_origin("A", "B", "a2a:SendMessage", deadline_s=5)
    clock.now += 5
    with pytest.raises(DelegationTokenExpiredError):
        minter.mint_next(parent, "B", "C", "a2a:SendMessage")


@pytest.mark.parametrize(
    ("ttl_s", "deadline_s", "scope"),
    [
        (0.5, None, "a2a:SendMessage"),
        (float("nan"), None, "a2a:SendMessage"),
        (60, 0, "a2a:SendMessage"),
        (60, -1, "a2a:SendMessage"),
        (60, None, ""),
        (60, None, ["a2a:SendMessage", "skill:two words"]),
    ],
)
def test_nonsense_durations_and_scopes_are_programming_errors(
    minter: TokenMinter, ttl_s: float, deadline_s: float | None, scope: str | list[str]
) -> None:
    with pytest.raises(ValueError):
        minter.mint_origin("A", "B", scope, deadline_s, ttl_s=ttl_s)


# --- what the verifier refuses ------------------------------------------------------------------


def test_an_edited_payload_is_invalid(minter: TokenMinter, verifier: TokenVerifier) -> None:
    token, _ = minter.mint_origin("A", "B", "a2a:SendMessage")
    header, _, signature = token.split(".")
    payload = payload_of(token)
    payload["chain"] = ["root"]

    with_bmac = f"{header}.{b64(json.dumps(payload).encode())}.{signature}"
    del payload["bmac"]
    without_bmac = f"{header}.{b64(json.dumps(payload).encode())}.{signature}"

    for forged in (with_bmac, without_bmac):
        with pytest.raises(DelegationTokenInvalidError):
            verifier.verify_presented(forged, "B")


def test_a_token_signed_with_another_key_is_invalid(
    keys: BrokerKeys, verifier: TokenVerifier, clock: FakeClock
) -> None:
    stranger = BrokerKeys(Ed25519PrivateKey.generate())
    token, claims = TokenMinter(stranger, ISSUER, 300, clock).mint_origin("A", "B", "a2a:X")
    with pytest.raises(DelegationTokenInvalidError):  # its kid is not ours
        verifier.verify_presented(token, "B")

    payload = as_json(claims)
    with pytest.raises(DelegationTokenInvalidError):  # our kid, the stranger's signature
        verifier.verify_presented(signed_by(stranger.private_key, keys.kid, payload), "B")
    del payload["bmac"]
    with pytest.raises(DelegationTokenInvalidError):  # and without a MAC to shortcut
        verifier.verify_presented(signed_by(stranger.private_key, keys.kid, payload), "B")


def test_a_token_the_broker_signed_without_bmac_takes_the_signature_path(
    keys: BrokerKeys, minter: TokenMinter, verifier: TokenVerifier
) -> None:
    _, claims = minter.mint_origin("A", "B", "a2a:SendMessage")
    payload = as_json(msgspec.structs.replace(claims, bmac=None))

    token = signed_by(keys.private_key, keys.kid, payload)

    assert verifier.verify_presented(token, "B") == msgspec.structs.replace(claims, bmac=None)


def test_a_wrong_bmac_is_invalid_even_under_a_good_signature(
    keys: BrokerKeys, minter: TokenMinter, verifier: TokenVerifier
) -> None:
    _, claims = minter.mint_origin("A", "B", "a2a:SendMessage")
    payload = as_json(claims)
    payload["bmac"] = payload["bmac"][::-1]
    token = signed_by(keys.private_key, keys.kid, payload)
    assert jwt.api_jws.decode_complete(token, keys.private_key.public_key(), ["EdDSA"])

    with pytest.raises(DelegationTokenInvalidError):
        verifier.verify_presented(token, "B")


def test_a_jwt_the_broker_signed_for_another_purpose_is_not_a_delegation_token(
    keys: BrokerKeys, minter: TokenMinter, verifier: TokenVerifier
) -> None:
    _, claims = minter.mint_origin("A", "B", "a2a:SendMessage")
    other = keys.sign_jwt(as_json(claims))  # typ "JWT"
    with pytest.raises(DelegationTokenInvalidError):
        verifier.verify_presented(other, "B")


def _twin(segment: str) -> str | None:
    """The segment with its last character changed but decoding to the same bytes, if any."""
    for char in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_":
        twin = segment[:-1] + char
        if twin != segment and unb64(twin) == unb64(segment):
            return twin
    return None


def test_only_the_canonical_base64_of_each_segment_is_accepted(
    keys: BrokerKeys, minter: TokenMinter, verifier: TokenVerifier
) -> None:
    _, claims = minter.mint_origin("A", "B", "a2a:SendMessage")
    for token in (
        minter.mint_origin("A", "B", "a2a:SendMessage")[0],
        signed_by(keys.private_key, keys.kid, as_json(msgspec.structs.replace(claims, bmac=None))),
    ):
        header, payload, signature = token.split(".")
        variants = [
            f"{header}.{twin}.{signature}" if (twin := _twin(payload)) else None,
            f"{header}.{payload}.{twin}" if (twin := _twin(signature)) else None,
        ]
        for variant in filter(None, variants):
            with pytest.raises(DelegationTokenInvalidError):
                verifier.verify_presented(variant, "B")


@pytest.mark.parametrize(
    "signature", ["", "AAAA", "x", "A" * 85, "A" * 87, "A" * 85 + "=", "!" * 86]
)
def test_the_mac_path_refuses_a_signature_segment_that_is_no_signature(
    minter: TokenMinter, verifier: TokenVerifier, signature: str
) -> None:
    """The fast path does not check the signature's bits, but every segment is a canonical
    base64url text, and the third is 64 bytes like every Ed25519 signature (issue 11)."""
    token, _ = minter.mint_origin("A", "B", "a2a:SendMessage")
    header, payload, _ = token.split(".")
    assert "bmac" in payload_of(token)
    with pytest.raises(DelegationTokenInvalidError):
        verifier.verify_presented(f"{header}.{payload}.{signature}", "B")


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c", "a.b.c.d", "x" * 9000])
def test_garbage_is_invalid(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(DelegationTokenInvalidError):
        verifier.verify_presented(token, "B")


def test_expiry_and_deadline_each_end_a_token(
    minter: TokenMinter, verifier: TokenVerifier, clock: FakeClock
) -> None:
    token, claims = minter.mint_origin("A", "B", "a2a:SendMessage", deadline_s=10, ttl_s=60)
    clock.now = claims.dl - 0.001
    assert verifier.verify_presented(token, "B") == claims

    clock.now = claims.dl  # the deadline, well before exp
    with pytest.raises(DelegationTokenExpiredError):
        verifier.verify_presented(token, "B")

    no_deadline, claims = minter.mint_origin("A", "B", "a2a:SendMessage", ttl_s=60)
    clock.now = claims.exp
    with pytest.raises(DelegationTokenExpiredError):
        verifier.verify_presented(no_deadline, "B")


def test_leeway_tolerates_a_little_clock_skew(
    keys: BrokerKeys, minter: TokenMinter, clock: FakeClock
) -> None:
    token, claims = minter.mint_origin("A", "B", "a2a:SendMessage", ttl_s=60)
    clock.now = claims.exp + 1
    assert TokenVerifier(keys, ISSUER, clock, leeway_s=2).verify_presented(token, "B") == claims


def test_a_token_presented_by_another_agent_is_not_theirs(
    minter: TokenMinter, verifier: TokenVerifier
) -> None:
    token, _ = minter.mint_origin("A", "B", "a2a:SendMessage")
    with pytest.raises(DelegationTokenNotYoursError):
        verifier.verify_presented(token, "C")


def test_tokens_of_a_previous_key_still_verify_after_rotation(clock: FakeClock) -> None:
    old = Ed25519PrivateKey.generate()
    token, claims = TokenMinter(BrokerKeys(old), ISSUER, 300, clock).mint_origin("A", "B", "a2a:X")
    rotated = BrokerKeys(Ed25519PrivateKey.generate(), previous=[old.public_key()])

    assert TokenVerifier(rotated, ISSUER, clock).verify_presented(token, "B") == claims

    dropped = BrokerKeys(Ed25519PrivateKey.generate())
    with pytest.raises(DelegationTokenInvalidError):
        TokenVerifier(dropped, ISSUER, clock).verify_presented(token, "B")


def test_tokens_from_another_issuer_are_refused(
    keys: BrokerKeys, verifier: TokenVerifier, clock: FakeClock
) -> None:
    other_broker = TokenMinter(keys, "https://elsewhere.example", 300, clock)
    token, _ = other_broker.mint_origin("A", "B", "a2a:SendMessage")
    with pytest.raises(DelegationTokenInvalidError):
        verifier.verify_presented(token, "B")


def test_replicas_sharing_the_key_accept_each_others_tokens(clock: FakeClock) -> None:
    key = Ed25519PrivateKey.generate()
    token, claims = TokenMinter(BrokerKeys(key), ISSUER, 300, clock).mint_origin("A", "B", "a2a:X")
    assert TokenVerifier(BrokerKeys(key), ISSUER, clock).verify_presented(token, "B") == claims


# --- the error types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "code", "status", "reason"),
    [
        (DelegationTokenInvalidError, -32080, 401, "DELEGATION_TOKEN_INVALID"),
        (DelegationTokenExpiredError, -32081, 401, "DELEGATION_TOKEN_EXPIRED"),
        (DelegationTokenNotYoursError, -32082, 403, "DELEGATION_TOKEN_NOT_YOURS"),
        (DelegationTokenRevokedError, -32083, 403, "DELEGATION_TOKEN_REVOKED"),
        (DelegationRequiredError, -32084, 403, "DELEGATION_REQUIRED"),
    ],
)
def test_errors_carry_their_wire_identity(
    cls: type[BrokerError], code: int, status: int, reason: str
) -> None:
    assert (cls.code, cls.http_status, cls.reason) == (code, status, reason)
    assert not cls.transport_level
    assert cls in all_error_types()
    assert "Traceback" not in cls(detail="Traceback: internals").message


def test_claims_type_is_what_the_verifier_returns(
    minter: TokenMinter, verifier: TokenVerifier
) -> None:
    token, _ = minter.mint_origin("A", "B", "a2a:SendMessage")
    assert isinstance(verifier.verify_presented(token, "B"), DelegationClaims)


# --- data-control tags (docs/datacontrols.md) ----------------------------------------------------


def test_tags_travel_in_the_token_and_verified_claims_expose_them(
    minter: TokenMinter, verifier: TokenVerifier
) -> None:
    token, minted = minter.mint_origin(
        "a", "b", "a2a:SendMessage", tags=["secret:aws_key", "pii:email"]
    )

    claims = verifier.verify_presented(token, "b")

    assert claims.tags == ("pii:email", "secret:aws_key") == minted.tags
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert payload["tags"] == ["pii:email", "secret:aws_key"]


def test_a_token_without_tags_has_no_tags_claim(minter: TokenMinter) -> None:
    token, claims = minter.mint_origin("a", "b", "a2a:SendMessage")

    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert "tags" not in payload
    assert claims.tags == ()


def test_a_childs_tags_keep_every_tag_of_its_parent(
    minter: TokenMinter, verifier: TokenVerifier
) -> None:
    token_b, _ = minter.mint_origin("a", "b", "a2a:SendMessage", tags=["secret:jwt"])
    parent = verifier.verify_presented(token_b, "b")

    token_c, _ = minter.mint_next(parent, "b", "c", "a2a:SendMessage", tags=["pii:card"])
    quiet, _ = minter.mint_next(parent, "b", "d", "a2a:SendMessage")

    assert verifier.verify_presented(token_c, "c").tags == ("pii:card", "secret:jwt")
    assert verifier.verify_presented(quiet, "d").tags == ("secret:jwt",)


def test_tags_that_are_not_type_names_are_programming_errors(minter: TokenMinter) -> None:
    with pytest.raises(ValueError, match="type name"):
        minter.mint_origin("a", "b", "a2a:SendMessage", tags=["jane@example.com"])
    with pytest.raises(ValueError, match="at most"):
        minter.mint_origin("a", "b", "a2a:SendMessage", tags=[f"pii:t{i}" for i in range(65)])


def test_tags_are_covered_by_the_mac_and_the_signature(
    minter: TokenMinter, verifier: TokenVerifier, keys: BrokerKeys
) -> None:
    token, _ = minter.mint_origin("a", "b", "a2a:SendMessage", tags=["secret:jwt"])
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["tags"] = []  # an agent trying to shed a tag
    forged = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode())
    edited = f"{header}.{forged.rstrip(b'=').decode()}.{signature}"

    with pytest.raises(DelegationTokenInvalidError):
        verifier.verify_presented(edited, "b")
