"""What a delegation token costs the broker: mint, verify on the MAC fast path, verify by signature.

    .venv/bin/python benchmarks/token_costs.py [--number N]

Prints µs per operation (best of 5 runs of N, one process, one core). The signature path is what
a token without ``bmac``, or one signed by a previous key, costs; agents pay it too.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import timeit
from collections.abc import Callable

import msgspec
import nacl.bindings
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.delegation.agent import verify_broker_token
from broker.delegation.tokens import (
    TokenMinter,
    TokenVerifier,
    header_segment,
    sodium_secret_key,
)
from broker.identity.keys import BrokerKeys

ISSUER = "https://broker.example"


def per_op_us(run: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(run, number=number, repeat=5)) / number * 1e6


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=5000)
    number = parser.parse_args().number

    keys = BrokerKeys(Ed25519PrivateKey.generate())
    minter = TokenMinter(keys, ISSUER, default_ttl_s=300)
    verifier = TokenVerifier(keys, ISSUER)
    _, origin = minter.mint_origin("planner", "researcher", "a2a:SendMessage skill:research")
    token, claims = minter.mint_next(origin, "researcher", "writer", "a2a:SendMessage skill:write")

    unmaced = msgspec.json.encode(msgspec.structs.replace(claims, bmac=None))
    signing_input = header_segment(keys.kid) + b"." + _b64(unmaced).encode()
    no_bmac = f"{signing_input.decode()}.{_b64(keys.private_key.sign(signing_input))}"
    jwks = keys.jwks()
    secret_key = sodium_secret_key(keys)

    async def agent_verify() -> None:
        for _ in range(number):
            await verify_broker_token(token, jwks, "writer", ISSUER)

    rows = [
        ("mint_origin", per_op_us(lambda: minter.mint_origin("a", "b", "a2a:X"), number)),
        ("mint_next", per_op_us(lambda: minter.mint_next(claims, "writer", "c", "a2a:X"), number)),
        (
            "verify, bmac fast path",
            per_op_us(lambda: verifier.verify_presented(token, "writer"), number),
        ),
        (
            "verify, Ed25519 path",
            per_op_us(lambda: verifier.verify_presented(no_bmac, "writer"), number),
        ),
        (
            "agent verify_broker_token (JWKS dict)",
            min(timeit.repeat(lambda: asyncio.run(agent_verify()), number=1, repeat=5))
            / number
            * 1e6,
        ),
        (
            "reference: Ed25519 sign, cryptography",
            per_op_us(lambda: keys.private_key.sign(signing_input), number),
        ),
        (
            "reference: Ed25519 sign, libsodium (mint)",
            per_op_us(lambda: nacl.bindings.crypto_sign(signing_input, secret_key)[:64], number),
        ),
        (
            "reference: HMAC-SHA256 of the payload",
            per_op_us(lambda: hmac.digest(b"k" * 32, unmaced, hashlib.sha256), number),
        ),
    ]
    print(f"token: {len(token)} chars, chain depth {claims.depth}")
    for name, micros in rows:
        print(f"{name:<40} {micros:8.1f} µs/op")


if __name__ == "__main__":
    main()
