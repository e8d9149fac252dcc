"""The broker's signing keys, its JWKS, and the public keys that verify agent cards."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import ECAlgorithm
from jwt.api_jwk import PyJWK

from broker.identity.keys import (
    JWKS_PATH,
    BrokerKeys,
    KeyFileError,
    generate_signing_key_file,
    jwk_thumbprint,
    load_verification_keys,
)
from broker.settings import KeySettings, ServerSettings, Settings


def test_thumbprint_matches_rfc7638_example() -> None:
    # RFC 7638 section 3.1.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
        "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v"
        "-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08q"
        "NLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8aw"
        "apJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprint_matches_rfc8037_ed25519_example() -> None:
    # RFC 8037 appendix A.3.
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert jwk_thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_jwks_publishes_only_the_public_key_named_by_its_thumbprint() -> None:
    keys = BrokerKeys(Ed25519PrivateKey.generate())

    jwks = keys.jwks()

    assert len(jwks["keys"]) == 1
    (jwk,) = jwks["keys"]
    assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    assert jwk["kid"] == keys.kid == jwk_thumbprint(jwk)


def test_without_a_key_file_an_ephemeral_key_is_generated() -> None:
    settings = Settings(server=ServerSettings(public_url="https://broker.example/"))

    first, second = BrokerKeys.from_settings(settings), BrokerKeys.from_settings(settings)

    assert first.kid != second.kid
    assert first.jwks_url == f"https://broker.example{JWKS_PATH}"


def test_key_file_is_generated_private_and_loaded_relative_to_the_config(tmp_path: Path) -> None:
    kid = generate_signing_key_file(tmp_path / "broker-key.pem")
    settings = Settings(keys=KeySettings(signing_key_file="broker-key.pem"), base_dir=str(tmp_path))

    keys = BrokerKeys.from_settings(settings)

    assert keys.kid == kid
    assert stat.S_IMODE((tmp_path / "broker-key.pem").stat().st_mode) == 0o600


def test_generating_a_key_file_does_not_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    first = generate_signing_key_file(path)

    with pytest.raises(FileExistsError):
        generate_signing_key_file(path)
    second = generate_signing_key_file(path, overwrite=True)

    assert second != first


def test_missing_or_wrong_key_files_are_refused_by_name(tmp_path: Path) -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "ec.pem").write_bytes(ec_pem)
    (tmp_path / "junk.pem").write_text("not a key")

    for name in ("absent.pem", "ec.pem", "junk.pem"):
        settings = Settings(keys=KeySettings(signing_key_file=name), base_dir=str(tmp_path))
        with pytest.raises(KeyFileError, match=name):
            BrokerKeys.from_settings(settings)


def test_signed_jwt_verifies_with_the_published_jwk() -> None:
    keys = BrokerKeys(Ed25519PrivateKey.generate())
    claims = {"sub": "alpha", "aud": "beta", "exp": int(time.time()) + 60}

    token = keys.sign_jwt(claims)

    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "kid": keys.kid, "typ": "JWT"}
    public = PyJWK(keys.jwks()["keys"][0])
    assert jwt.decode(token, public, algorithms=["EdDSA"], audience="beta") == claims
    assert keys.decode_jwt(token, audience="beta") == claims


def test_previous_keys_stay_published_and_still_verify_after_rotation() -> None:
    old = BrokerKeys(Ed25519PrivateKey.generate())
    token = old.sign_jwt({"sub": "alpha", "exp": int(time.time()) + 60})

    rotated = BrokerKeys(Ed25519PrivateKey.generate(), [old.private_key.public_key()])

    assert [k["kid"] for k in rotated.jwks()["keys"]] == [rotated.kid, old.kid]
    assert rotated.decode_jwt(token)["sub"] == "alpha"
    assert rotated.public_key(old.kid) is not None


def test_tokens_from_other_keys_or_tampered_tokens_are_refused() -> None:
    keys = BrokerKeys(Ed25519PrivateKey.generate())
    stranger = BrokerKeys(Ed25519PrivateKey.generate())
    exp = int(time.time()) + 60
    header, _payload, signature = keys.sign_jwt({"sub": "alpha", "exp": exp}).split(".")
    forged_payload = jwt.utils.base64url_encode(
        json.dumps({"sub": "mallory", "exp": exp}).encode()
    ).decode()

    with pytest.raises(jwt.InvalidTokenError):
        keys.decode_jwt(stranger.sign_jwt({"sub": "alpha", "exp": exp}))
    with pytest.raises(jwt.InvalidTokenError):
        keys.decode_jwt(f"{header}.{forged_payload}.{signature}")
    with pytest.raises(jwt.InvalidTokenError):
        keys.decode_jwt(keys.sign_jwt({"sub": "alpha"}))  # no exp


# --- Keys that verify agent cards ---------------------------------------------------------------


def _ec_public_jwk(kid: str | None = None) -> dict[str, object]:
    jwk = dict(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), True))
    if kid:
        jwk["kid"] = kid
    return jwk


def test_verification_keys_load_from_jwk_jwks_and_pem_files(tmp_path: Path) -> None:
    (tmp_path / "one.jwk").write_text(json.dumps(_ec_public_jwk("card-key-1")))
    anonymous = _ec_public_jwk()
    (tmp_path / "set.json").write_text(json.dumps({"keys": [_ec_public_jwk("k2"), anonymous]}))
    ed_public = Ed25519PrivateKey.generate().public_key()
    (tmp_path / "ed.pem").write_bytes(
        ed_public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    rsa_public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (tmp_path / "rsa.pem").write_bytes(
        rsa_public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    keys = load_verification_keys(
        [tmp_path / n for n in ("one.jwk", "set.json", "ed.pem", "rsa.pem")]
    )

    assert len(keys) == 5
    assert keys["card-key-1"].algorithm_name == "ES256"
    assert keys[jwk_thumbprint(anonymous)].algorithm_name == "ES256"
    algorithms = sorted(k.algorithm_name for k in keys.values())
    assert algorithms == ["ES256", "ES256", "ES256", "EdDSA", "RS256"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "neither PEM nor JSON"),
        ('["a list"]', "neither a JWK nor a JWKS"),
        ('{"kty": "oct", "k": "c2VjcmV0"}', "private or symmetric"),
        ('{"kty": "EC", "crv": "P-256"}', "unsupported or malformed"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a PEM public key"),
    ],
)
def test_bad_verification_key_files_are_refused(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "key.jwk"
    path.write_text(content)

    with pytest.raises(KeyFileError, match=problem):
        load_verification_keys([path])


def test_private_jwk_and_duplicate_kid_are_refused(tmp_path: Path) -> None:
    private = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), True)
    (tmp_path / "private.jwk").write_text(json.dumps(private))
    (tmp_path / "a.jwk").write_text(json.dumps(_ec_public_jwk("same")))
    (tmp_path / "b.jwk").write_text(json.dumps(_ec_public_jwk("same")))

    with pytest.raises(KeyFileError, match="private"):
        load_verification_keys([tmp_path / "private.jwk"])
    with pytest.raises(KeyFileError, match="configured twice"):
        load_verification_keys([tmp_path / "a.jwk", tmp_path / "b.jwk"])
