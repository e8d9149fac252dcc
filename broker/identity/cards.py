"""Agent cards: validation, upstream signature checks, and the card the broker serves.

Pure functions over card dicts and ``a2a.types.AgentCard`` protos (the only I/O is
``CardVerifier.from_settings``, which reads the configured key files once). Parsing,
normalisation of 0.3 cards to 1.0, required-field validation and JWS handling are the a2a-sdk's.
"""

from __future__ import annotations

import binascii
import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlsplit

import msgspec
from a2a.client.card_resolver import parse_agent_card
from a2a.types import AgentCard
from a2a.utils._jcs import CanonicalizationError, canonicalize
from a2a.utils.constants import PROTOCOL_VERSION_CURRENT, TransportProtocol
from a2a.utils.errors import InvalidParamsError
from a2a.utils.proto_utils import validate_proto_required_fields
from a2a.utils.signing import (
    ProtectedHeader,
    SignatureVerificationError,
    create_agent_card_signer,
    create_signature_verifier,
)
from google.protobuf.json_format import (  # type: ignore[import-untyped,unused-ignore]
    MessageToDict,
    ParseError,
    SerializeToJsonError,
)
from jwt.api_jwk import PyJWK
from jwt.exceptions import InvalidKeyError
from jwt.utils import base64url_decode

from broker.errors import AgentCardSignatureError, InvalidAgentCardError
from broker.identity.keys import BrokerKeys, load_verification_keys

if TYPE_CHECKING:
    from broker.settings import Settings

SignatureStatus = Literal["verified", "unverified", "unsigned"]

CARD_SIGNATURE_ALGORITHMS = ["EdDSA", "ES256", "ES384", "RS256", "PS256"]
JSONRPC = TransportProtocol.JSONRPC.value
HTTP_JSON = TransportProtocol.HTTP_JSON.value
# The bindings the broker relays, and the path segment of each under /agents/{name}/.
BROKER_BINDING_PATHS = {JSONRPC: "jsonrpc", HTTP_JSON: "rest"}
BROKER_SCHEME_NAME = "brokerCredential"
BROKER_SCHEME_DESCRIPTION = (
    "The a2a-broker agent credential: send 'Authorization: Bearer <credential>' with the "
    "credential the broker issued to the calling agent."
)

Issue = dict[str, str]


@dataclass(frozen=True, slots=True)
class ValidatedCard:
    """A card that parsed, has every REQUIRED field, and offers a binding the broker relays.

    ``card_json`` is the card normalised to A2A 1.0 ProtoJSON (camelCase); ``jsonrpc_url`` and
    ``rest_url`` are the first upstream interface of each binding, or "" if it has none.
    """

    card: AgentCard
    card_json: dict[str, Any]
    jsonrpc_url: str
    rest_url: str
    signature_status: SignatureStatus


# --- Validation ---------------------------------------------------------------------------------


def validate_card(data: object, verifier: CardVerifier | None = None) -> ValidatedCard:
    """Validate an A2A 1.0 or 0.3 card dict; ``data`` is not modified.

    Signatures are checked by ``verifier`` on the card exactly as received (without a verifier a
    signed card is "unverified"). Raises ``InvalidAgentCardError`` with
    ``data={"errors": [{"field", "message"}, ...]}`` naming every problem found, or
    ``AgentCardSignatureError`` if the verifier refuses the card.
    """
    card = _parse(data)
    card_json = _to_json(card)
    issues = _required_field_issues(card) + _interface_issues(card_json)
    issues += _canonical_form_issues(card_json)
    if issues:
        raise InvalidAgentCardError(data={"errors": issues})
    if verifier is not None:
        status = verifier.check(card)
    else:
        status = "unverified" if card.signatures else "unsigned"
    return ValidatedCard(
        card=card,
        card_json=card_json,
        jsonrpc_url=_first_url(card_json, JSONRPC),
        rest_url=_first_url(card_json, HTTP_JSON),
        signature_status=status,
    )


def decode_card_json(raw: bytes) -> Any:
    """Decode a card document's bytes; raises ``InvalidAgentCardError`` if they are not JSON."""
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidAgentCardError("The agent card is not valid JSON.", detail=str(exc)) from exc
    except RecursionError as exc:
        raise _card_error("", "The card nests JSON too deeply.", "recursion limit") from exc


def _parse(data: object) -> AgentCard:
    if not isinstance(data, Mapping):
        raise _card_error("", "A card must be a JSON object.")
    try:
        return parse_agent_card(copy.deepcopy(dict(data)))
    except RecursionError as exc:
        raise _card_error("", "The card nests JSON too deeply.", "recursion limit") from exc
    except (ParseError, ValueError, TypeError) as exc:
        field = _field_of_parse_error(str(exc))
        raise _card_error(field, "The value has the wrong JSON type.", str(exc)) from exc


def _to_json(card: AgentCard) -> dict[str, Any]:
    try:
        card_json: dict[str, Any] = MessageToDict(card)
    except (SerializeToJsonError, ValueError, RecursionError) as exc:
        # e.g. NaN or Infinity in extension params, which ProtoJSON cannot write.
        message = "The card holds a value that JSON cannot represent."
        raise _card_error("", message, str(exc)) from exc
    return card_json


_PARSE_CHAIN_RE = re.compile(r"Failed to parse (\w+) field")
_PARSE_AT_RE = re.compile(r" at AgentCard\.?(\S*?)\.*$")


def _field_of_parse_error(text: str) -> str:
    """The JSON path a protobuf ParseError names ("" for the whole card)."""
    chain = _PARSE_CHAIN_RE.findall(text)
    at = _PARSE_AT_RE.search(text)
    path = at.group(1) if at else ""
    if not path:
        return ".".join(chain)
    # The path names the failing field itself, or for a container error its parent message.
    segments = {segment.split("[", 1)[0] for segment in path.split(".")}
    return path if not chain or chain[-1] in segments else f"{path}.{chain[-1]}"


def _required_field_issues(card: AgentCard) -> list[Issue]:
    try:
        validate_proto_required_fields(card)
    except InvalidParamsError as exc:
        found = (exc.data or {}).get("errors", [])
        return [_issue(_camel_path(e["field"]), e["message"]) for e in found]
    return []


def _camel_path(path: str) -> str:
    """A proto field path in JSON names: ``default_input_modes`` -> ``defaultInputModes``."""
    return re.sub(r"(\[[^\]]*\])|_([a-z])", lambda m: m.group(1) or m.group(2).upper(), path)


def _interface_issues(card_json: dict[str, Any]) -> list[Issue]:
    interfaces = card_json.get("supportedInterfaces", [])
    issues = [
        _issue(f"supportedInterfaces[{i}].url", "Must be an absolute http(s) URL.")
        for i, iface in enumerate(interfaces)
        if iface.get("protocolBinding") in BROKER_BINDING_PATHS and not _is_http_url(iface)
    ]
    if interfaces and not any(i.get("protocolBinding") in BROKER_BINDING_PATHS for i in interfaces):
        message = (
            "The broker relays only the JSONRPC and HTTP+JSON bindings; the card offers neither."
        )
        issues.append(_issue("supportedInterfaces", message))
    return issues


def _is_http_url(interface: Mapping[str, Any]) -> bool:
    parts = urlsplit(str(interface.get("url", "")))
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _canonical_form_issues(card_json: dict[str, Any]) -> list[Issue]:
    # The broker must be able to sign what it serves: RFC 8785 has no form for NaN, huge
    # integers or extreme nesting, all of which can hide in extension params.
    try:
        canonicalize(card_json)
    except (CanonicalizationError, RecursionError):
        return [
            _issue("", "The card has no canonical JSON form (RFC 8785), so it cannot be signed.")
        ]
    return []


def _first_url(card_json: dict[str, Any], binding: str) -> str:
    for iface in card_json.get("supportedInterfaces", []):
        if iface.get("protocolBinding") == binding:
            return str(iface["url"])
    return ""


def _issue(field: str, message: str) -> Issue:
    return {"field": field, "message": message}


def _card_error(field: str, message: str, detail: str | None = None) -> InvalidAgentCardError:
    return InvalidAgentCardError(data={"errors": [_issue(field, message)]}, detail=detail)


# --- Upstream signatures ------------------------------------------------------------------------


class CardVerifier:
    """Checks the JWS signatures on upstream cards against configured public keys (by ``kid``).

    A signature whose ``kid`` is configured must verify (at least one such signature, as the SDK's
    verifier has it); signatures by unknown keys make the card "unverified", never "verified".
    The ``jku`` header is ignored: keys are never fetched from a URL a card names.
    """

    def __init__(self, keys: Mapping[str, PyJWK], *, require_signatures: bool = False) -> None:
        self._keys = dict(keys)
        self.require_signatures = require_signatures
        self._verify = create_signature_verifier(self._key_for, CARD_SIGNATURE_ALGORITHMS)

    @classmethod
    def from_settings(cls, settings: Settings) -> CardVerifier:
        """Read ``[registry] card_key_files``; raises ``broker.identity.keys.KeyFileError``."""
        paths = [settings.path(p) for p in settings.registry.card_key_files]
        keys = load_verification_keys(paths)
        return cls(keys, require_signatures=settings.registry.require_card_signatures)

    def check(self, card: AgentCard) -> SignatureStatus:
        """The card's signature status; raises ``AgentCardSignatureError`` if it is refused."""
        if not card.signatures:
            return self._allow("unsigned", "The broker accepts only signed agent cards.")
        if not any(kid in self._keys for kid in _signature_kids(card)):
            return self._allow(
                "unverified", "No key configured in the broker verifies this card's signature."
            )
        try:
            self._verify(card)
        except SignatureVerificationError as exc:
            raise AgentCardSignatureError(detail=str(exc)) from exc
        return "verified"

    def _allow(self, status: SignatureStatus, refusal: str) -> SignatureStatus:
        if self.require_signatures:
            raise AgentCardSignatureError(refusal, detail=f"card signature status {status}")
        return status

    def _key_for(self, kid: str | None, _jku: str | None) -> PyJWK:
        key = self._keys.get(kid or "")
        if key is None:
            # A PyJWTError, so the SDK's verifier moves on to the card's next signature.
            raise InvalidKeyError("no configured key for this kid")
        return key


def _signature_kids(card: AgentCard) -> list[str]:
    return _kids(signature.protected for signature in card.signatures)


def card_key_ids(card_json: str) -> list[str]:
    """The ``kid`` of every signature of a stored card (``AgentRecord.card_json``)."""
    try:
        signatures = json.loads(card_json).get("signatures") or []
    except (ValueError, AttributeError):
        return []
    return _kids(s.get("protected", "") for s in signatures if isinstance(s, dict))


def _kids(protected_headers: Iterable[str]) -> list[str]:
    kids = []
    for protected in protected_headers:
        try:
            header = json.loads(base64url_decode(str(protected).encode("ascii")))
        except (ValueError, UnicodeError, binascii.Error):
            continue
        if isinstance(header, dict) and isinstance(header.get("kid"), str):
            kids.append(header["kid"])
    return kids


# --- The card as the broker serves it -----------------------------------------------------------


def rewrite_for_broker(card_json: Mapping[str, Any], name: str, public_url: str) -> dict[str, Any]:
    """The broker's version of a card (``card_json`` is not modified).

    The card is first normalised to A2A 1.0 ProtoJSON, so 0.3 fields (``url``,
    ``additionalInterfaces``, ...) and unknown fields, which no signature could cover, are not
    served. Then interfaces point at the broker (one per relayed binding the upstream offers, in
    the upstream's order), the only security is the broker credential (card level; skill-level
    requirements are removed) and upstream signatures are dropped. Everything else is kept.
    Raises ``InvalidAgentCardError`` if ``card_json`` does not parse as a card.
    """
    card = _to_json(_parse(card_json))
    card["supportedInterfaces"] = _broker_interfaces(card, name, public_url.rstrip("/"))
    card["securitySchemes"] = {
        BROKER_SCHEME_NAME: {
            "httpAuthSecurityScheme": {
                "scheme": "Bearer",
                "description": BROKER_SCHEME_DESCRIPTION,
            }
        }
    }
    card["securityRequirements"] = [{"schemes": {BROKER_SCHEME_NAME: {"list": []}}}]
    for skill in card.get("skills", []):
        skill.pop("securityRequirements", None)
    card.pop("signatures", None)
    return card


def _broker_interfaces(
    card_json: Mapping[str, Any], name: str, public_url: str
) -> list[dict[str, str]]:
    # dict.fromkeys: each binding once, in the upstream's order.
    interfaces = card_json.get("supportedInterfaces", [])
    offered = dict.fromkeys(i.get("protocolBinding") for i in interfaces)
    return [
        {
            "url": f"{public_url}/agents/{name}/{BROKER_BINDING_PATHS[binding]}",
            "protocolBinding": binding,
            "protocolVersion": PROTOCOL_VERSION_CURRENT,
        }
        for binding in offered
        if binding in BROKER_BINDING_PATHS
    ]


def sign_card(card_json: Mapping[str, Any], keys: BrokerKeys) -> dict[str, Any]:
    """``card_json`` with any signatures replaced by one broker signature (EdDSA, typ JOSE).

    The protected header names the broker key (``kid``) and, when set, ``keys.jwks_url`` (``jku``).
    As the A2A spec has it, the signature covers the RFC 8785 form of the parsed card, so
    ``card_json`` should be ProtoJSON (as ``rewrite_for_broker`` returns it); it is not modified.
    """
    card = parse_agent_card(copy.deepcopy(dict(card_json)))
    del card.signatures[:]
    header: dict[str, str] = {"alg": "EdDSA", "kid": keys.kid, "typ": "JOSE"}
    if keys.jwks_url:
        header["jku"] = keys.jwks_url
    create_agent_card_signer(keys.signing_jwk, cast(ProtectedHeader, header))(card)
    signed = copy.deepcopy(dict(card_json))
    signed["signatures"] = [MessageToDict(signature) for signature in card.signatures]
    return signed


class BrokerCardRewriter:
    """An agent's card as the broker serves it: its interfaces the broker's (at ``public_url``),
    signed by the broker alone. Called as ``rewrite(card, agent_name)``."""

    def __init__(self, public_url: str, keys: BrokerKeys) -> None:
        self._public_url = public_url
        self._keys = keys

    def __call__(self, card: Mapping[str, Any], name: str) -> dict[str, Any]:
        return sign_card(rewrite_for_broker(card, name, self._public_url), self._keys)
