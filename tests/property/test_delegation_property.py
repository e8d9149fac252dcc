"""Delegation tokens under random chains and random tampering.

* Authority never grows along a chain: each child's ``exp`` and ``dl`` are at most its parent's,
  depth grows by one, the chain by the caller, and the scope is what the hop asked for.
* Any single-character change to a token is refused as invalid (never as expired or not-yours),
  base64 variants that decode to the same bytes included: the verifier accepts only the canonical
  encoding. One stated exception: on the broker's MAC fast path the signature segment is not read
  (a claim cannot cover the signature over itself), so a change there leaves the token accepted
  with exactly the minted claims. On the signature path (no ``bmac``, or a previous key) there is
  no exception.
"""

from __future__ import annotations

import base64
import json
import string
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.delegation.errors import DelegationTokenExpiredError, DelegationTokenInvalidError
from broker.delegation.tokens import Actor, DelegationClaims, TokenMinter, TokenVerifier
from broker.identity.keys import BrokerKeys

ISSUER = "https://broker.example"
T0 = 1_800_000_000.0
KEYS = BrokerKeys(Ed25519PrivateKey.generate())
B64URL = string.ascii_letters + string.digits + "-_"


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def actors(act: Actor | None) -> list[str]:
    """The actors of an ``act`` claim, outermost first."""
    found = []
    while act is not None:
        found.append(act.sub)
        act = act.act
    return found


names = st.sampled_from(["A", "B", "C", "D", "planner", "writer"])
scope_entries = st.lists(
    st.from_regex(r"(a2a|skill):[A-Za-z0-9_.-]{1,12}", fullmatch=True), min_size=1, max_size=4
)
hops = st.fixed_dictionaries(
    {
        "target": names,
        "scope": scope_entries,
        "ttl_s": st.none() | st.floats(1, 10_000),
        "deadline_s": st.none() | st.floats(0.001, 10_000),
        "advance_s": st.floats(0, 200),
    }
)


@given(origin=names, first=hops, later=st.lists(hops, max_size=8))
def test_authority_never_grows_along_a_chain(
    origin: str, first: dict[str, Any], later: list[dict[str, Any]]
) -> None:
    clock = FakeClock()
    minter = TokenMinter(KEYS, ISSUER, default_ttl_s=300, clock=clock)
    verifier = TokenVerifier(KEYS, ISSUER, clock=clock)
    token, parent = minter.mint_origin(
        origin, first["target"], first["scope"], first["deadline_s"], ttl_s=first["ttl_s"]
    )
    assert parent.dl <= parent.exp and parent.depth == 1 and parent.chain == (origin,)
    for hop in later:
        clock.now += hop["advance_s"]
        try:
            presented = verifier.verify_presented(token, parent.aud)
        except DelegationTokenExpiredError:
            assert clock.now >= parent.dl
            return
        assert presented == parent
        caller = parent.aud
        token, child = minter.mint_next(
            presented, caller, hop["target"], hop["scope"], hop["deadline_s"], ttl_s=hop["ttl_s"]
        )
        assert child.exp <= parent.exp and child.dl <= parent.dl and child.dl <= child.exp
        assert child.depth == parent.depth + 1 == len(child.chain)
        assert child.chain == (*parent.chain, caller)
        assert child.scope == " ".join(hop["scope"])
        assert (child.sub, child.tree, child.parent) == (origin, parent.tree, parent.jti)
        assert actors(child.act) == list(reversed(child.chain))
        parent = child


FAST_TOKEN, FAST_CLAIMS = TokenMinter(KEYS, ISSUER, 300, FakeClock()).mint_origin(
    "A", "B", ["a2a:SendMessage", "skill:research"], 60
)


def _without_bmac(claims: DelegationClaims) -> str:
    """A token signed by the broker's key without ``bmac``: it takes the signature path."""
    header, _, _ = FAST_TOKEN.split(".")
    payload = msgspec.json.encode(msgspec.structs.replace(claims, bmac=None))
    signing_input = f"{header}.{_b64(payload)}".encode()
    return f"{signing_input.decode()}.{_b64(KEYS.private_key.sign(signing_input))}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


SLOW_TOKEN = _without_bmac(FAST_CLAIMS)
SLOW_CLAIMS = msgspec.structs.replace(FAST_CLAIMS, bmac=None)
replacements = st.one_of(st.sampled_from(B64URL), st.characters(), st.sampled_from(".=+/ "))


def _mutate(token: str, index: int, char: str) -> str:
    return token[:index] + char + token[index + 1 :]


@settings(max_examples=600)
@given(position=st.floats(0, 1, exclude_max=True), char=replacements)
def test_any_single_change_is_invalid_on_the_mac_path(position: float, char: str) -> None:
    index = int(position * len(FAST_TOKEN))
    if FAST_TOKEN[index] == char:
        return
    verifier = TokenVerifier(KEYS, ISSUER, clock=FakeClock())
    try:
        claims = verifier.verify_presented(_mutate(FAST_TOKEN, index, char), "B")
    except DelegationTokenInvalidError:
        return
    # Only the signature segment is not read on this path, and the claims are the minted ones.
    assert index > FAST_TOKEN.rindex(".")
    assert claims == FAST_CLAIMS


@settings(max_examples=600)
@given(position=st.floats(0, 1, exclude_max=True), char=replacements)
def test_any_single_change_is_invalid_on_the_signature_path(position: float, char: str) -> None:
    index = int(position * len(SLOW_TOKEN))
    if SLOW_TOKEN[index] == char:
        return
    verifier = TokenVerifier(KEYS, ISSUER, clock=FakeClock())
    try:
        claims = verifier.verify_presented(_mutate(SLOW_TOKEN, index, char), "B")
    except DelegationTokenInvalidError:
        return
    raise AssertionError(f"accepted a token changed at {index}: {claims}")


def test_the_signature_path_token_is_genuine() -> None:
    verifier = TokenVerifier(KEYS, ISSUER, clock=FakeClock())
    assert verifier.verify_presented(SLOW_TOKEN, "B") == SLOW_CLAIMS
    assert "bmac" not in json.loads(_unb64(SLOW_TOKEN.split(".")[1]))
