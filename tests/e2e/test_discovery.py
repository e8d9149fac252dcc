"""Discovery: the agent listing, served cards and their signatures, health, unknown routes.

The served card is checked with the a2a-sdk the way a client would: fetch the broker's JWKS, then
let the SDK's card resolver verify the card's signature with the key its ``kid`` names.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver
from a2a.types import AgentCard
from a2a.utils.signing import InvalidSignaturesError, create_signature_verifier
from google.protobuf.json_format import ParseDict
from jwt import PyJWK

from broker.errors import (
    HTTPMethodNotAllowedError,
    InvalidCredentialError,
    RouteNotFoundError,
    UnauthenticatedError,
)

from .conftest import Broker, Caller
from .wire import assert_jsonrpc_error, assert_rest_error

JWKS_PATH = "/.well-known/jwks.json"
CARD_PATH = "/.well-known/agent-card.json"


def _protected_header(card: dict[str, Any]) -> dict[str, Any]:
    [signature] = card["signatures"]
    encoded = signature["protected"]
    return dict(json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))))


async def _card(http: httpx.AsyncClient, broker: Broker, name: str) -> httpx.Response:
    response = await http.get(f"{broker.agent_url(name)}{CARD_PATH}")
    assert response.status_code == 200, response.text
    return response


# --- GET /agents ------------------------------------------------------------------------------


async def test_agents_lists_the_served_cards_of_active_agents(
    broker: Broker,
    http: httpx.AsyncClient,
    alice_http: httpx.AsyncClient,
    admin_http: httpx.AsyncClient,
    fresh_agent: Caller,
):
    suspended = await admin_http.post(f"/agents/{fresh_agent.name}/suspend")
    assert suspended.status_code == 200, suspended.text

    response = await alice_http.get(f"{broker.url}/agents")

    assert response.status_code == 200, response.text
    listed = {entry["name"]: entry for entry in response.json()["agents"]}
    assert {"echo", "gated", "alice", "bob"} <= set(listed)
    assert fresh_agent.name not in listed
    echo = listed["echo"]
    assert echo["cardUrl"] == f"{broker.agent_url('echo')}{CARD_PATH}"
    assert echo["card"] == (await _card(http, broker, "echo")).json()


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        pytest.param(None, UnauthenticatedError, id="none"),
        pytest.param("Bearer not-a-broker-credential", InvalidCredentialError, id="wrong"),
    ],
)
async def test_agents_needs_an_agent_credential(
    broker: Broker, http: httpx.AsyncClient, authorization: str | None, expected: type
):
    headers = {"Authorization": authorization} if authorization else {}

    response = await http.get(f"{broker.url}/agents", headers=headers)

    assert_rest_error(response, expected)
    assert response.headers["www-authenticate"].startswith("Bearer"), response.headers


# --- signatures -------------------------------------------------------------------------------


async def test_served_card_verifies_with_the_key_of_the_brokers_jwks(
    broker: Broker, http: httpx.AsyncClient
):
    jwks = await http.get(f"{broker.url}{JWKS_PATH}")
    card = (await _card(http, broker, "echo")).json()

    assert jwks.status_code == 200, jwks.text
    keys = {key["kid"]: key for key in jwks.json()["keys"]}
    header = _protected_header(card)
    assert (header["alg"], header["jku"]) == ("EdDSA", f"{broker.url}{JWKS_PATH}")
    jwk = keys[header["kid"]]
    assert (jwk["kty"], jwk["crv"]) == ("OKP", "Ed25519")
    assert "d" not in jwk  # the public key only
    verifier = create_signature_verifier(lambda kid, _jku: PyJWK(keys[kid or ""]), ["EdDSA"])
    resolver = A2ACardResolver(http, broker.agent_url("echo"))
    resolved = await resolver.get_agent_card(signature_verifier=verifier)
    assert resolved.name == "echo"
    tampered = ParseDict({**card, "description": "tampered"}, AgentCard())
    with pytest.raises(InvalidSignaturesError):
        verifier(tampered)


# --- caching ----------------------------------------------------------------------------------


async def test_card_etag_answers_if_none_match_with_304(broker: Broker, http: httpx.AsyncClient):
    first = await _card(http, broker, "echo")
    etag = first.headers["etag"]

    again = await http.get(
        f"{broker.agent_url('echo')}{CARD_PATH}", headers={"If-None-Match": etag}
    )
    other = await http.get(
        f"{broker.agent_url('echo')}{CARD_PATH}", headers={"If-None-Match": '"not-this-one"'}
    )

    assert (again.status_code, again.content) == (304, b"")
    assert again.headers["etag"] == etag
    assert first.headers["cache-control"] == "public, max-age=60"
    assert "last-modified" in first.headers
    assert (other.status_code, other.json()) == (200, first.json())


# --- health and unknown routes ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_needs_no_credential(broker: Broker, http: httpx.AsyncClient, path: str):
    response = await http.get(f"{broker.url}{path}")

    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["/nowhere", "/admin", "/agents/echo/nowhere", "/.well-known/x"])
async def test_unknown_path_is_route_not_found(broker: Broker, http: httpx.AsyncClient, path: str):
    response = await http.get(f"{broker.url}{path}")

    assert_rest_error(response, RouteNotFoundError)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("POST", "/healthz", id="post-healthz"),
        pytest.param("DELETE", JWKS_PATH, id="delete-jwks"),
        pytest.param("PUT", f"/agents/echo{CARD_PATH}", id="put-card"),
    ],
)
async def test_wrong_http_method_is_not_allowed(
    broker: Broker, http: httpx.AsyncClient, method: str, path: str
):
    response = await http.request(method, f"{broker.url}{path}")

    assert_rest_error(response, HTTPMethodNotAllowedError)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_wrong_http_method_on_a_jsonrpc_url_is_a_jsonrpc_error(
    broker: Broker, http: httpx.AsyncClient, method: str
):
    """Every answer at a JSON-RPC URL is a JSON-RPC response, with the HTTP status too."""
    response = await http.request(method, broker.jsonrpc_url("echo"))

    assert_jsonrpc_error(response, HTTPMethodNotAllowedError, request_id=None)
