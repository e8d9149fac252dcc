"""Agent cards: validation, upstream signatures, and the card the broker serves."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from a2a.client.card_resolver import parse_agent_card
from a2a.utils.proto_utils import validate_proto_required_fields
from a2a.utils.signing import (
    InvalidSignaturesError,
    create_agent_card_signer,
    create_signature_verifier,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.json_format import MessageToDict
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm
from jwt.api_jwk import PyJWK
from jwt.utils import base64url_decode

from broker.errors import AgentCardSignatureError, InvalidAgentCardError
from broker.identity.cards import (
    CardVerifier,
    decode_card_json,
    rewrite_for_broker,
    sign_card,
    validate_card,
)
from broker.identity.keys import BrokerKeys
from broker.settings import RegistrySettings, Settings

CARDS = Path(__file__).parent.parent / "fixtures" / "cards"
PUBLIC_URL = "https://broker.example"
UPSTREAM_KID = "weather-2026"


def load_card(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CARDS / f"{name}.json").read_text(encoding="utf-8"))
    return data


def errors_of(exc: pytest.ExceptionInfo[InvalidAgentCardError]) -> list[dict[str, str]]:
    assert exc.value.data is not None
    found: list[dict[str, str]] = exc.value.data["errors"]
    return found


# --- Validation ---------------------------------------------------------------------------------


def test_a2a_1_0_card_is_accepted_with_its_first_endpoint_per_binding() -> None:
    data = load_card("weather_v1")
    original = copy.deepcopy(data)

    validated = validate_card(data)

    assert data == original  # the caller's dict is not modified
    assert validated.jsonrpc_url == "https://weather.example.org/a2a/jsonrpc"
    assert validated.rest_url == "https://weather.example.org/a2a/rest"
    assert validated.signature_status == "unsigned"
    assert validated.card.name == "Weather Agent"
    assert validated.card_json["defaultOutputModes"] == ["text/plain", "application/json"]
    assert validated.card_json["capabilities"]["pushNotifications"] is False


def test_a2a_0_3_card_is_normalised_to_1_0() -> None:
    validated = validate_card(load_card("legacy_v03"))

    card = validated.card_json
    assert validated.jsonrpc_url == "http://legacy.example.org/a2a/jsonrpc"
    assert validated.rest_url == "http://legacy.example.org/a2a/rest"
    assert not {"url", "preferredTransport", "additionalInterfaces", "protocolVersion"} & set(card)
    assert card["capabilities"]["extendedAgentCard"] is True
    assert card["securitySchemes"]["bearer"] == {"httpAuthSecurityScheme": {"scheme": "bearer"}}
    assert card["securityRequirements"] == [{"schemes": {"bearer": {}}}]


def test_missing_required_fields_are_listed_field_by_field_in_json_names() -> None:
    data = {
        "name": "x",
        "supportedInterfaces": [{"url": "https://a.example/rpc", "protocolBinding": "JSONRPC"}],
        "skills": [{"id": "s", "name": "S"}],
    }

    with pytest.raises(InvalidAgentCardError) as exc:
        validate_card(data)

    fields = {e["field"] for e in errors_of(exc)}
    assert fields == {
        "description",
        "version",
        "capabilities",
        "defaultInputModes",
        "defaultOutputModes",
        "supportedInterfaces[0].protocolVersion",
        "skills[0].description",
        "skills[0].tags",
    }
    assert all(e["message"] for e in errors_of(exc))


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda c: c.update(name=5), "name"),
        (lambda c: c["capabilities"].update(streaming="yes"), "capabilities.streaming"),
        (lambda c: c["skills"][1].update(tags=[1]), "skills.tags"),
        (lambda c: c.update(supportedInterfaces="x"), "supportedInterfaces"),
        (lambda c: c.update(skills={"a": 1}), ""),
    ],
)
def test_wrong_types_name_the_field_without_echoing_parser_text(edit: Any, field: str) -> None:
    data = load_card("weather_v1")
    edit(data)

    with pytest.raises(InvalidAgentCardError) as exc:
        validate_card(data)

    assert errors_of(exc) == [{"field": field, "message": "The value has the wrong JSON type."}]
    assert exc.value.detail  # the parser's own words go to the log only
    assert exc.value.detail not in exc.value.message


@pytest.mark.parametrize("data", [[], "card", None, 3])
def test_a_card_must_be_an_object(data: object) -> None:
    with pytest.raises(InvalidAgentCardError) as exc:
        validate_card(data)

    assert errors_of(exc) == [{"field": "", "message": "A card must be a JSON object."}]


def test_undecodable_card_bytes_are_an_invalid_card() -> None:
    with pytest.raises(InvalidAgentCardError, match="not valid JSON"):
        decode_card_json(b"{nope")


def test_grpc_only_card_is_refused() -> None:
    with pytest.raises(InvalidAgentCardError) as exc:
        validate_card(load_card("grpc_only"))

    (error,) = errors_of(exc)
    assert error["field"] == "supportedInterfaces"
    assert "JSONRPC and HTTP+JSON" in error["message"]


@pytest.mark.parametrize("url", ["/a2a/jsonrpc", "ftp://weather.example.org/x", "https://", "x"])
def test_relayed_interfaces_need_absolute_http_urls(url: str) -> None:
    data = load_card("weather_v1")
    data["supportedInterfaces"][2]["url"] = url

    with pytest.raises(InvalidAgentCardError) as exc:
        validate_card(data)

    assert errors_of(exc) == [
        {"field": "supportedInterfaces[2].url", "message": "Must be an absolute http(s) URL."}
    ]


def test_values_without_a_json_form_are_refused() -> None:
    data = load_card("weather_v1")
    data["capabilities"]["extensions"][0]["params"]["x"] = float("nan")

    with pytest.raises(InvalidAgentCardError) as exc:
        validate_card(data)

    assert errors_of(exc)[0]["field"] == ""


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=20,
)
PROPERTY_KEYS = BrokerKeys(Ed25519PrivateKey.generate())
CARD_KEYS = st.sampled_from([*load_card("weather_v1"), "url", "security", "kind"])


@settings(max_examples=200, deadline=None)
@given(edits=st.dictionaries(CARD_KEYS, JSON_VALUES, max_size=4))
def test_any_edit_of_a_card_is_refused_as_invalid_or_served_signed(
    edits: dict[str, Any],
) -> None:
    data = {**load_card("weather_v1"), **edits}

    try:
        validated = validate_card(data)
    except InvalidAgentCardError as exc:
        assert exc.data is not None
        assert exc.data["errors"]
        return
    signed = sign_card(
        rewrite_for_broker(validated.card_json, "weather", PUBLIC_URL), PROPERTY_KEYS
    )
    assert len(signed["signatures"]) == 1


# --- Upstream signatures ------------------------------------------------------------------------


def sign_upstream(
    data: dict[str, Any], key: ec.EllipticCurvePrivateKey, kid: str
) -> dict[str, Any]:
    """``data`` as an upstream would serve it, signed with the SDK's own signer."""
    card = parse_agent_card(copy.deepcopy(data))
    header = {"alg": "ES256", "kid": kid, "typ": "JOSE", "jku": "https://weather.example.org/jwks"}
    signer = create_agent_card_signer(PyJWK(ECAlgorithm.to_jwk(key, True)), header)
    return {**data, "signatures": MessageToDict(signer(card))["signatures"]}


@pytest.fixture
def upstream_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def verifier_for(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey, *, require: bool = False
) -> CardVerifier:
    jwk = {**ECAlgorithm.to_jwk(key.public_key(), True), "kid": UPSTREAM_KID}
    (tmp_path / "weather.jwk").write_text(json.dumps(jwk))
    registry = RegistrySettings(card_key_files=("weather.jwk",), require_card_signatures=require)
    return CardVerifier.from_settings(Settings(registry=registry, base_dir=str(tmp_path)))


def test_signed_card_is_verified_with_a_configured_key(
    tmp_path: Path, upstream_key: ec.EllipticCurvePrivateKey
) -> None:
    signed = sign_upstream(load_card("weather_v1"), upstream_key, UPSTREAM_KID)

    validated = validate_card(signed, verifier_for(tmp_path, upstream_key))

    assert validated.signature_status == "verified"


def test_signed_card_verifies_with_a_pem_ed25519_key(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / "card.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    verifier = CardVerifier.from_settings(
        Settings(registry=RegistrySettings(card_key_files=("card.pem",)), base_dir=str(tmp_path))
    )
    upstream = BrokerKeys(key)  # any Ed25519 signer will do; the PEM key is named by thumbprint

    signed = sign_card(load_card("weather_v1"), upstream)

    assert validate_card(signed, verifier).signature_status == "verified"


def test_tampered_signed_card_is_refused(
    tmp_path: Path, upstream_key: ec.EllipticCurvePrivateKey
) -> None:
    signed = sign_upstream(load_card("weather_v1"), upstream_key, UPSTREAM_KID)
    signed["supportedInterfaces"][2]["url"] = "https://evil.example/a2a/jsonrpc"

    with pytest.raises(AgentCardSignatureError) as exc:
        validate_card(signed, verifier_for(tmp_path, upstream_key))

    assert exc.value.message == AgentCardSignatureError.default_message


def test_signature_by_the_wrong_key_for_a_configured_kid_is_refused(
    tmp_path: Path, upstream_key: ec.EllipticCurvePrivateKey
) -> None:
    impostor = ec.generate_private_key(ec.SECP256R1())
    signed = sign_upstream(load_card("weather_v1"), impostor, UPSTREAM_KID)

    with pytest.raises(AgentCardSignatureError):
        validate_card(signed, verifier_for(tmp_path, upstream_key))


def test_signature_with_an_unknown_kid_is_accepted_as_unverified(
    tmp_path: Path, upstream_key: ec.EllipticCurvePrivateKey
) -> None:
    signed = sign_upstream(load_card("weather_v1"), upstream_key, "someone-else")

    validated = validate_card(signed, verifier_for(tmp_path, upstream_key))

    assert validated.signature_status == "unverified"


def test_required_signatures_refuse_unsigned_and_unverifiable_cards(
    tmp_path: Path, upstream_key: ec.EllipticCurvePrivateKey
) -> None:
    verifier = verifier_for(tmp_path, upstream_key, require=True)
    card = load_card("weather_v1")

    with pytest.raises(AgentCardSignatureError, match="only signed"):
        validate_card(card, verifier)
    with pytest.raises(AgentCardSignatureError, match="No key configured"):
        validate_card(sign_upstream(card, upstream_key, "someone-else"), verifier)
    signed = sign_upstream(card, upstream_key, UPSTREAM_KID)
    assert validate_card(signed, verifier).signature_status == "verified"


# --- The card the broker serves -----------------------------------------------------------------


@pytest.fixture
def broker_keys() -> BrokerKeys:
    return BrokerKeys(Ed25519PrivateKey.generate(), jwks_url=f"{PUBLIC_URL}/.well-known/jwks.json")


def test_rewritten_card_points_only_at_the_broker(
    tmp_path: Path, upstream_key: ec.EllipticCurvePrivateKey
) -> None:
    signed = sign_upstream(load_card("weather_v1"), upstream_key, UPSTREAM_KID)
    validated = validate_card(signed, verifier_for(tmp_path, upstream_key))
    before = copy.deepcopy(validated.card_json)

    served = rewrite_for_broker(validated.card_json, "weather", PUBLIC_URL + "/")

    assert validated.card_json == before
    validate_proto_required_fields(parse_agent_card(copy.deepcopy(served)))
    assert served["supportedInterfaces"] == [
        {
            "url": f"{PUBLIC_URL}/agents/weather/rest",
            "protocolBinding": "HTTP+JSON",
            "protocolVersion": "1.0",
        },
        {
            "url": f"{PUBLIC_URL}/agents/weather/jsonrpc",
            "protocolBinding": "JSONRPC",
            "protocolVersion": "1.0",
        },
    ]
    assert "weather.example.org" not in json.dumps(served["supportedInterfaces"])
    assert list(served["securitySchemes"]) == ["brokerCredential"]
    scheme = served["securitySchemes"]["brokerCredential"]["httpAuthSecurityScheme"]
    assert scheme["scheme"] == "Bearer"
    assert "a2a-broker" in scheme["description"]
    assert served["securityRequirements"] == [{"schemes": {"brokerCredential": {"list": []}}}]
    assert all("securityRequirements" not in skill for skill in served["skills"])
    assert "signatures" not in served


def test_rewrite_keeps_everything_else() -> None:
    card_json = validate_card(load_card("weather_v1")).card_json

    served = rewrite_for_broker(card_json, "weather", PUBLIC_URL)

    replaced = {"supportedInterfaces", "securitySchemes", "securityRequirements", "skills"}
    assert {k: v for k, v in served.items() if k not in replaced} == {
        k: v for k, v in card_json.items() if k not in replaced
    }
    for served_skill, skill in zip(served["skills"], card_json["skills"], strict=True):
        assert served_skill == {k: v for k, v in skill.items() if k != "securityRequirements"}


def test_rewrite_of_a_0_3_card_offers_each_binding_once() -> None:
    card_json = validate_card(load_card("legacy_v03")).card_json

    served = rewrite_for_broker(card_json, "legacy", PUBLIC_URL)

    assert [i["protocolBinding"] for i in served["supportedInterfaces"]] == ["JSONRPC", "HTTP+JSON"]
    assert {i["protocolVersion"] for i in served["supportedInterfaces"]} == {"1.0"}


def test_rewrite_of_a_raw_0_3_card_leaks_no_upstream_url_and_no_unknown_field() -> None:
    raw = load_card("legacy_v03")
    raw["x-unknown"] = {"secret": "http://legacy.example.org/internal"}

    served = rewrite_for_broker(raw, "legacy", PUBLIC_URL)

    assert "legacy.example.org" not in json.dumps(served)
    assert not {"url", "preferredTransport", "additionalInterfaces", "x-unknown"} & set(served)
    assert "security" not in served["skills"][0]


def test_rewrite_refuses_what_is_not_a_card() -> None:
    with pytest.raises(InvalidAgentCardError):
        rewrite_for_broker({"skills": "x"}, "legacy", PUBLIC_URL)


def test_broker_signature_verifies_with_the_published_key_and_breaks_on_edit(
    broker_keys: BrokerKeys,
) -> None:
    served = rewrite_for_broker(validate_card(load_card("weather_v1")).card_json, "w", PUBLIC_URL)

    signed = sign_card(served, broker_keys)

    (signature,) = signed["signatures"]
    header = json.loads(base64url_decode(signature["protected"].encode()))
    assert header == {
        "alg": "EdDSA",
        "kid": broker_keys.kid,
        "typ": "JOSE",
        "jku": f"{PUBLIC_URL}/.well-known/jwks.json",
    }
    published = {k["kid"]: PyJWK(k) for k in broker_keys.jwks()["keys"]}
    verify = create_signature_verifier(lambda kid, _jku: published[kid or ""], ["EdDSA"])
    # What a client does: parse the served JSON, then verify.
    verify(parse_agent_card(json.loads(json.dumps(signed))))
    edited = copy.deepcopy(signed)
    edited["description"] = "Something else"
    with pytest.raises(InvalidSignaturesError):
        verify(parse_agent_card(edited))


def test_re_signing_replaces_earlier_signatures(broker_keys: BrokerKeys) -> None:
    card_json = validate_card(load_card("weather_v1")).card_json

    twice = sign_card(sign_card(card_json, broker_keys), broker_keys)

    assert len(twice["signatures"]) == 1
    assert "signatures" not in card_json
