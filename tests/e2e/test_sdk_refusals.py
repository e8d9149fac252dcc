"""An a2a-sdk client over HTTP+JSON learns the broker's reason for a refusal (docs/clients.md)."""

from __future__ import annotations

import httpx
import pytest
from a2a.client.errors import A2AClientError
from a2a_broker_agent import broker_refusal

from broker.errors import InvalidCredentialError

from .conftest import Broker
from .sdk import client_for, send_request, unique_text


async def test_the_reason_of_a_refusal_is_on_the_sdk_error(broker: Broker) -> None:
    headers = {"Authorization": "Bearer a2ab_not-a-credential"}
    async with httpx.AsyncClient(headers=headers, timeout=10, trust_env=False) as http:
        client = await client_for(http, broker.agent_url("echo"), "HTTP+JSON")

        with pytest.raises(A2AClientError) as raised:
            [_ async for _ in client.send_message(send_request(unique_text("refused")))]

    refusal = broker_refusal(raised.value)
    assert refusal is not None
    assert (refusal.reason, refusal.status) == (InvalidCredentialError.reason, 401)
    assert refusal.message


def test_an_error_the_broker_did_not_make_has_no_refusal() -> None:
    assert broker_refusal(A2AClientError("Client Request timed out")) is None
