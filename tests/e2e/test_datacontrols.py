"""Data controls end to end: a real broker process with ``[datacontrols]`` on, the real a2a-sdk
client and echo agent, the real ``openai`` client against the fake provider, and (for chains)
two brokers on one Redis with the hopper agents verifying every token they get.

What a user would see: a card number in a prompt never reaches the provider and comes back to
the caller as written; a key split across streamed chunks is redacted; tagged work is refused
at the hop to an agent a flow rule forbids, however many hops after the tag was found; and
none of the values planted (canaries) shows up in the broker's log, audit, SIEM export or
metrics, though the policy let some through to the agent.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from google.protobuf.json_format import MessageToDict

from broker.errors import DataBlockedError
from testkit.audit_files import audit_text
from testkit.brokers import start_broker
from testkit.canaries import Canaries
from testkit.config import credential_sha256
from testkit.procs import free_port, start_services

from .conftest import (
    BINDINGS,
    ECHO_UPSTREAM_TOKEN,
    ECHO_UPSTREAM_TOKEN_ENV,
    Upstream,
    _broker_config,
    _fetch_card,
    _static_card,
    launch_fake_llm,
)
from .mesh import Mesh, hop_reply, new_marker, plan, seen, start_mesh
from .sdk import client_for, send_request
from .wire import assert_jsonrpc_error, jsonrpc, recorded_requests, user_message

PROVIDER_KEY_ENV = "E2E_DATA_PROVIDER_KEY"
# bob may send no secret anywhere.
# fake-small: prompts' cards pseudonymised (restored for the caller), every other type redacted.
# fake-large: secrets may reach it; its answers' secrets are redacted. The echo agent may get
# e-mail addresses (tagged), nothing else.
RULES = [
    {"direction": "request", "callers": ["bob"], "actions": {"secret:*": "block"}},
    {"direction": "request", "models": ["fake-small"],
     "actions": {"pii:card": "pseudonymize", "*": "redact"}},
    {"direction": "request", "models": ["fake-large"],
     "actions": {"secret:*": "allow", "*": "redact"}},
    {"direction": "response", "models": ["fake-*"], "actions": {"secret:*": "redact"}},
    {"direction": "request", "agents": ["echo"], "actions": {"pii:email": "tag", "*": "redact"}},
    {"direction": "response", "agents": ["echo"], "actions": {"pii:email": "redact"}},
]  # fmt: skip


@dataclass(frozen=True)
class DataBroker:
    url: str
    home: Path
    log: Path
    provider: str
    echo: str
    alice: str
    bob: str
    metrics_token: str

    def openai(self, credential: str = "") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1",
            api_key=credential or self.alice,
            max_retries=0,
            http_client=httpx.AsyncClient(trust_env=False, timeout=10),
        )


@pytest.fixture(scope="module")
def data_broker(upstreams: dict[str, Upstream], logs: Path) -> Iterator[DataBroker]:
    home = logs / "data-broker"
    metrics_token = secrets.token_urlsafe(16)
    with start_services([launch_fake_llm(home)]) as [provider]:
        httpx.post(f"{provider.url}/_mode", json={"echo": True, "piece": 4}, trust_env=False)
        config = _broker_config(free_port())
        config.set(
            "llm.providers.fake",
            base_url=f"{provider.url}/v1",
            key_env=PROVIDER_KEY_ENV,
            models=["fake-small", "fake-large"],
            timeout_s=5.0,
        )
        config.set("datacontrols", enabled=True, rules=RULES)
        config.set("audit.export", enabled=True, poll_interval_s=0.1)
        config.set("audit.export", sinks=[{"name": "siem", "kind": "jsonl", "path": "siem.jsonl"}])
        config.set("metrics", token_sha256=credential_sha256(metrics_token))
        env = {
            PROVIDER_KEY_ENV: f"sk-provider-{secrets.token_hex(8)}",
            ECHO_UPSTREAM_TOKEN_ENV: ECHO_UPSTREAM_TOKEN,
        }
        with start_broker(config, log_dir=home, env=env) as broker:
            broker.register("echo", _fetch_card(upstreams["echo"].url))
            alice = broker.register("alice", _static_card("alice", upstreams["echo"].url))
            bob = broker.register("bob", _static_card("bob", upstreams["echo"].url))
            yield DataBroker(
                broker.url, home, broker.log, provider.url, upstreams["echo"].url, alice, bob,
                metrics_token,
            )  # fmt: skip


async def _provider_saw(broker: DataBroker, marker: str) -> list[str]:
    async with httpx.AsyncClient(trust_env=False) as http:
        recorded = (await http.get(f"{broker.provider}/_recorded")).json()
    return [json.dumps(r["body"]) for r in recorded if marker in json.dumps(r["body"])]


def _audit_records(broker: DataBroker) -> list[dict[str, Any]]:
    records = []
    for path in sorted((broker.home / "var" / "audit").rglob("*.jsonl")):
        records += [json.loads(line) for line in audit_text(path).splitlines() if line.strip()]
    return records


async def test_a_card_is_pseudonymised_for_the_provider_and_restored_for_the_caller(
    data_broker: DataBroker,
) -> None:
    canaries = Canaries()
    card, marker = canaries.values["pii:card"], uuid.uuid4().hex
    client = data_broker.openai()

    reply = await client.chat.completions.create(
        model="fake-small", messages=[{"role": "user", "content": f"{marker} card {card}"}]
    )

    [sent] = await _provider_saw(data_broker, marker)
    assert card not in sent and "<CARD_1>" in sent  # the provider saw a placeholder
    assert reply.choices[0].message.content == f"You said: {marker} card {card}"


async def test_a_secret_split_across_streamed_chunks_is_redacted(
    data_broker: DataBroker,
) -> None:
    key = Canaries().values["secret:aws_key"]
    marker = uuid.uuid4().hex
    client = data_broker.openai()

    stream = await client.chat.completions.create(
        model="fake-large",
        messages=[{"role": "user", "content": f"{marker} the key is {key} ok"}],
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]

    [sent] = await _provider_saw(data_broker, marker)
    assert key in sent  # the rules let secrets reach this model; its answer is split in 4s
    assert "".join(pieces) == f"You said: {marker} the key is <AWS_KEY_1> ok"
    assert all(key[:4] not in piece or piece.startswith("<") for piece in pieces)


async def test_a_blocked_secret_is_refused_with_the_documented_error_and_goes_nowhere(
    data_broker: DataBroker,
) -> None:
    key, marker = Canaries().values["secret:github_token"], uuid.uuid4().hex
    text = f"{marker} token {key}"
    headers = {"Authorization": f"Bearer {data_broker.bob}"}
    async with httpx.AsyncClient(headers=headers, timeout=10, trust_env=False) as http:
        refused = await jsonrpc(
            http, f"{data_broker.url}/agents/echo/jsonrpc", "SendMessage",
            {"message": user_message(text)},
        )  # fmt: skip
        echo_saw = await recorded_requests(http, data_broker.echo, marker)
    error = assert_jsonrpc_error(refused, DataBlockedError)
    assert error["data"][0]["metadata"]["types"] == "secret:github_token"
    assert echo_saw == []

    with pytest.raises(openai.PermissionDeniedError) as denied:
        await data_broker.openai(data_broker.bob).chat.completions.create(
            model="fake-small", messages=[{"role": "user", "content": text}]
        )
    assert denied.value.code == "data_blocked"
    assert await _provider_saw(data_broker, marker) == []
    refusals = [r for r in _audit_records(data_broker) if r.get("reason") == "DATA_BLOCKED"]
    assert [r["detail"]["data.request"] for r in refusals] == ["secret:github_token 1 block"] * 2


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "unary"])
@pytest.mark.parametrize("binding", BINDINGS)
async def test_an_agent_s_answer_is_redacted_for_the_sdk_client(
    data_broker: DataBroker, binding: str, streaming: bool
) -> None:
    email, marker = Canaries().values["pii:email"], uuid.uuid4().hex
    headers = {"Authorization": f"Bearer {data_broker.alice}"}
    async with httpx.AsyncClient(headers=headers, timeout=10, trust_env=False) as http:
        sdk = await client_for(
            http, f"{data_broker.url}/agents/echo", binding, streaming=streaming
        )
        events = [e async for e in sdk.send_message(send_request(f"{marker} to {email}"))]
        [echo_saw] = await recorded_requests(http, data_broker.echo, marker)

    assert email.encode() in echo_saw["body"]  # tagged on the way in: the agent gets it
    answer = json.dumps([MessageToDict(e) for e in events])
    assert email not in answer and f"echo: {marker} to <EMAIL_1>" in answer


async def test_canaries_appear_nowhere_but_where_the_policy_let_them_through(
    data_broker: DataBroker,
) -> None:
    canaries = Canaries()
    marker = uuid.uuid4().hex
    planted = f"{marker} {canaries.text()}"
    headers = {"Authorization": f"Bearer {data_broker.alice}"}
    async with httpx.AsyncClient(headers=headers, timeout=10, trust_env=False) as http:
        sdk = await client_for(http, f"{data_broker.url}/agents/echo", "JSONRPC")
        [_ async for _ in sdk.send_message(send_request(planted))]
        echo_saw = await recorded_requests(http, data_broker.echo, marker)
    client = data_broker.openai()
    await client.chat.completions.create(
        model="fake-small", messages=[{"role": "user", "content": planted}]
    )
    stream = await client.chat.completions.create(
        model="fake-small", messages=[{"role": "user", "content": planted}], stream=True
    )
    [_ async for _ in stream]

    # The echo agent got the e-mail address (tagged: the policy lets it through), nothing else.
    email = canaries.values["pii:email"]
    assert email.encode() in echo_saw[0]["body"]
    others = Canaries()
    others.values = {k: v for k, v in canaries.values.items() if k != "pii:email"}
    others.assert_absent(echo_saw[0]["body"])
    for sent in await _provider_saw(data_broker, marker):
        canaries.assert_absent(sent)
    # The broker itself kept none of them: log, audit, SIEM export, metrics.
    sink = _wait_for_export(data_broker, marker_records=len(_audit_records(data_broker)))
    async with httpx.AsyncClient(trust_env=False) as http:
        metrics_auth = {"Authorization": f"Bearer {data_broker.metrics_token}"}
        scraped = (await http.get(f"{data_broker.url}/metrics", headers=metrics_auth)).text
    canaries.assert_absent(data_broker.log, data_broker.home / "var" / "audit", sink, scraped)
    # What they do hold: the types found, their counts and the actions, never the values.
    assert 'a2a_broker_data_detections_total{action="redact",direction="request",' in scraped
    found = [r["detail"].get("data.request", "") for r in _audit_records(data_broker)]
    assert "pii:card 1 pseudonymize, pii:email 1 redact" in "|".join(found)
    assert "pii:card 1 pseudonymize" in sink.read_text()  # the SIEM got the same detail


def _wait_for_export(broker: DataBroker, *, marker_records: int) -> Path:
    """The SIEM file once it holds as many events as the audit had records."""
    sink = broker.home / "siem.jsonl"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sink.exists() and len(sink.read_text().splitlines()) >= marker_records:
            break
        time.sleep(0.1)  # another process's file can only be polled
    assert sink.exists()
    return sink


# --- tags along a chain -------------------------------------------------------------------------

CHAIN = ["a", "b", "c"]
CHAIN_POLICY = "\n".join(
    [
        "g, alice, role:user",
        *(f"g, {name}, role:agent" for name in CHAIN),
        "p, role:user, *, originate, allow",
        "p, role:user, *, SendMessage:*, allow",
        "p, role:agent, *, SendMessage:*, allow",
        "",
    ]
)
# alice's e-mail addresses tag the work; the agents' own mentions of them add nothing (allow);
# work tagged pii:email may not reach c.
CHAIN_TABLES = {
    "datacontrols": {
        "enabled": True,
        "rules": [
            {"callers": ["alice"], "actions": {"pii:email": "tag"}},
            {"callers": ["a", "b"], "actions": {"pii:email": "allow"}},
        ],
        "flows": [{"tags": ["pii:*"], "agents": ["c"]}],
    }
}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Mesh]:
    folder = tmp_path_factory.mktemp("datachain")
    with start_mesh(
        folder, redis_url, agents=CHAIN, callers=["alice"], policy=CHAIN_POLICY,
        tables=CHAIN_TABLES,
    ) as started:  # fmt: skip
        yield started


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        yield client


async def test_tagged_work_is_refused_at_the_hop_to_a_forbidden_agent(
    chain: Mesh, http: httpx.AsyncClient
) -> None:
    marker = new_marker("tagged") + " for jane.doe@example.com"

    reply = await hop_reply(http, chain, "alice", "a", plan(marker, "b", "c"))

    # a -> b goes (b is not forbidden); b -> c is refused at the hop, by the tag alone: the
    # e-mail address in b's request adds no tag (allow), the one its token carries does.
    to_b = reply["results"][0]
    assert to_b["ok"] is True
    to_c = to_b["reply"]["results"][0]
    assert (to_c["ok"], to_c["reason"]) == (False, "DATA_FLOW_DENIED")
    [b_saw] = await seen(http, chain, "b", marker)
    assert b_saw["claims"]["tags"] == ["pii:email"]  # verified by b against the JWKS
    assert await seen(http, chain, "c", marker) == []
    refusals = [r for r in _mesh_audit(chain) if r.get("reason") == "DATA_FLOW_DENIED"]
    assert [(r["caller"], r["target"]) for r in refusals] == [("b", "c")]
    assert refusals[0]["detail"]["error.tag"] == "pii:email"


def _mesh_audit(mesh: Mesh) -> list[dict[str, Any]]:
    records = []
    for path in sorted(mesh.logs.rglob("*.jsonl")):
        if "audit" in str(path):
            lines = audit_text(path).splitlines()
            records += [json.loads(line) for line in lines if line.startswith("{")]
    return records
