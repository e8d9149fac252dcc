"""The one outbound seam: its error table, and calls the broker makes itself going through it.

The transport's behaviour on a real network (egress, timeouts, pools, stale connections) is in
``test_egress.py`` and ``test_upstream_stale.py``; here the ``FakeTransport`` stands in for it.
"""

from __future__ import annotations

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.recorder import AuditRecorder
from broker.containment.tree_kill import TreeKiller
from broker.delegation.tokens import TokenMinter
from broker.errors import (
    AgentCardFetchError,
    BrokerError,
    EgressDeniedError,
    StreamIdleTimeoutError,
    UpstreamBadResponseError,
    UpstreamConnectTimeoutError,
    UpstreamPoolExhaustedError,
    UpstreamResponseTooLargeError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from broker.identity.keys import BrokerKeys
from broker.llm.errors import LlmProviderError, LlmProviderTimeoutError
from broker.outbound.errors import card_fetch_error, provider_error
from broker.outbound.fake import FakeRequest, FakeResponse, FakeTransport, answering
from broker.settings import EgressSettings, ServerSettings, Settings
from broker.stores.base import AgentRecord
from broker.stores.memory import MemoryBackend

KEYS = BrokerKeys(Ed25519PrivateKey.generate())


@pytest.mark.parametrize(
    ("failure", "as_provider"),
    [
        (UpstreamConnectTimeoutError, LlmProviderTimeoutError),
        (UpstreamTimeoutError, LlmProviderTimeoutError),
        (StreamIdleTimeoutError, LlmProviderTimeoutError),
        (UpstreamUnreachableError, LlmProviderError),
        (UpstreamBadResponseError, LlmProviderError),
        (UpstreamResponseTooLargeError, LlmProviderError),
        (EgressDeniedError, LlmProviderError),
        (UpstreamPoolExhaustedError, UpstreamPoolExhaustedError),  # the broker's own limit
    ],
)
def test_a_transport_failure_is_named_as_the_provider_s(
    failure: type[BrokerError], as_provider: type[BrokerError]
) -> None:
    named = provider_error(failure(detail="the cause"))
    assert type(named) is as_provider
    assert named.detail == "the cause"  # what the transport saw stays in the log


@pytest.mark.parametrize(
    "failure",
    [
        UpstreamUnreachableError,
        UpstreamConnectTimeoutError,
        UpstreamTimeoutError,
        UpstreamBadResponseError,
    ],
)
def test_a_card_fetch_names_the_failure_and_keeps_its_detail(failure: type[BrokerError]) -> None:
    named = card_fetch_error(failure(detail="the cause"))
    assert isinstance(named, AgentCardFetchError)
    assert named.message.startswith("The agent card could not be fetched: ")
    assert named.detail == "the cause"


def test_a_card_fetch_keeps_an_egress_refusal() -> None:
    refusal = EgressDeniedError("Egress refused: no.")
    assert card_fetch_error(refusal) is refusal


async def test_the_fake_transport_applies_the_egress_rules_before_sending() -> None:
    transport = FakeTransport(answering(FakeResponse(200, b"{}")), EgressSettings())
    with pytest.raises(EgressDeniedError, match="loopback"):
        await transport.send("POST", "http://127.0.0.1:9/", headers={}, body=b"", stream=False)
    assert transport.sent == []


async def test_a_tree_kill_cancels_each_task_through_the_transport() -> None:
    """The broker's own CancelTask goes out like a mediated call: through the one transport,
    with a hop token the agent can verify and the broker-held credential."""
    answers = {"t1": {"result": {"id": "t1"}}, "t2": {"error": {"data": [{"reason": "X"}]}}}

    async def agent(request: FakeRequest) -> FakeResponse:
        task = msgspec.json.decode(request.body or b"{}")["params"]["id"]
        return FakeResponse(200, msgspec.json.encode({"jsonrpc": "2.0", "id": 1, **answers[task]}))

    transport = FakeTransport(agent)
    stores = MemoryBackend().stores()
    card = '{"name": "worker"}'
    await stores.registry.put(
        AgentRecord(name="worker", card_json=card, jsonrpc_url="http://127.0.0.1:9/rpc")
    )
    for task in ("t1", "t2"):
        await stores.task_trees.add("tree-1", "worker", task, ttl_s=60)
    settings = Settings(server=ServerSettings(public_url="http://broker.test"))
    minter = TokenMinter(KEYS, settings.public_url, settings.delegation.token_ttl_s)
    killer = TreeKiller(settings, stores, transport, minter, AuditRecorder(None))

    outcome = await killer.kill("tree-1")

    results = {t["task_id"]: t["result"] for t in outcome["tasks"]}
    assert results == {"t1": "cancelled", "t2": "X"}
    assert [r.url for r in transport.sent] == ["http://127.0.0.1:9/rpc"] * 2
    assert all(r.headers["authorization"].startswith("Bearer ") for r in transport.sent)
    assert all(r.headers["a2a-delegation"] for r in transport.sent)
    assert await stores.task_trees.members("tree-1") == [("worker", "t2")]
