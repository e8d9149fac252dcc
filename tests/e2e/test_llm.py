"""The OpenAI-compatible endpoint end to end: a real broker process, the fake provider in its own
process, and the real ``openai`` client with agents' broker credentials.

``_llm_tables`` below uses the ``[budgets]`` section (docs/budgets.md).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from testkit.audit_files import audit_text
from testkit.brokers import start_broker
from testkit.config import BrokerConfig, budget
from testkit.procs import REPO_ROOT, free_port, start_services

from .conftest import (
    ECHO_UPSTREAM_TOKEN,
    ECHO_UPSTREAM_TOKEN_ENV,
    Upstream,
    _broker_config,
    _cards_to_register,
    launch_fake_llm,
    register_all,
)
from .fake_llm import ANSWER, COMPLETION_TOKENS
from .wire import jsonrpc, recorded_requests, user_message

PROVIDER_KEY = f"sk-provider-{secrets.token_hex(8)}"
PROVIDER_KEY_ENV = "E2E_LLM_PROVIDER_KEY"
MODEL = "fake-small"



def _llm_tables(config: BrokerConfig, provider_url: str) -> BrokerConfig:
    config.set("llm", rate_per_s=0.5, burst=3)
    config.set(
        "llm.providers.fake",
        base_url=provider_url,
        key_env=PROVIDER_KEY_ENV,
        models=["fake-small", "fake-large"],
        price_in_per_mtok=2.0,
        price_out_per_mtok=10.0,
        timeout_s=2.0,
    )
    # bob may make 2 calls a day; every task tree 2 calls a day (A2A hops and LLM calls alike).
    config.set("budgets", trees=[budget("calls", "day", 2)])
    return config.set("budgets.agents", bob=[budget("calls", "day", 2)])



@dataclass(frozen=True)
class LlmBroker:
    url: str
    admin_token: str
    audit_dir: Path
    fake_url: str
    echo_url: str  # the echo agent itself (its recorder), not through the broker
    credentials: dict[str, str]

    def client(self, agent: str, **kwargs: object) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1",
            api_key=self.credentials[agent],
            max_retries=0,
            http_client=httpx.AsyncClient(trust_env=False, timeout=10),
            **kwargs,  # type: ignore[arg-type]
        )


@pytest.fixture(scope="module")
def fake_provider(logs: Path) -> Iterator[str]:
    with start_services([launch_fake_llm(logs)]) as [provider]:
        yield provider.url


@pytest.fixture(scope="module")
def llm_broker(
    upstreams: dict[str, Upstream], fake_provider: str, logs: Path
) -> Iterator[LlmBroker]:
    home = logs / "llm-broker"  # its own folder: its audit chain is not the session broker's
    config = _llm_tables(_broker_config(free_port()), f"{fake_provider}/v1")
    env = {ECHO_UPSTREAM_TOKEN_ENV: ECHO_UPSTREAM_TOKEN, PROVIDER_KEY_ENV: PROVIDER_KEY}
    with start_broker(config, log_dir=home, env=env) as broker:
        credentials = register_all(broker, _cards_to_register(upstreams))
        audit = home / "var" / "audit"
        yield LlmBroker(
            broker.url, broker.admin_token, audit, fake_provider, upstreams["echo"].url,
            credentials,
        )  # fmt: skip


def _messages(text: str = "hello") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def _provider_saw(broker: LlmBroker, marker: str) -> list[str | None]:
    async with httpx.AsyncClient(trust_env=False) as http:
        recorded = (await http.get(f"{broker.fake_url}/_recorded")).json()
    return [r["authorization"] for r in recorded if marker in str(r["body"])]


async def test_chat_unary_and_stream_with_the_broker_held_key(llm_broker: LlmBroker) -> None:
    marker = uuid.uuid4().hex
    client = llm_broker.client("alice")
    reply = await client.chat.completions.create(model=MODEL, messages=_messages(marker))
    assert reply.choices[0].message.content == ANSWER
    stream = await client.chat.completions.create(
        model=MODEL, messages=_messages(marker), stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == COMPLETION_TOKENS
    seen = await _provider_saw(llm_broker, marker)
    assert seen == [f"Bearer {PROVIDER_KEY}"] * 2
    assert llm_broker.credentials["alice"] not in str(seen)
    # Audited like A2A requests: a decision before the provider was called, then the outcome
    # with the tokens charged; never the provider key nor the agent's credential.
    outcomes: list[dict[str, object]] = []
    for _ in range(100):
        records = _audit_records(llm_broker, caller="alice", operation="llm:chat")
        outcomes = [r for r in records if r["detail"]["phase"] == "outcome"]  # type: ignore[index]
        if len(outcomes) >= 2:
            break
        await asyncio.sleep(0.05)  # outcomes are appended just after the answer
    forwards = [r for r in records if r["detail"]["phase"] == "forward"]  # type: ignore[index]
    assert len(forwards) >= 2 and len(outcomes) >= 2
    assert all(r["tokens_out"] == COMPLETION_TOKENS for r in outcomes[:2])
    assert all(r["target"] == f"model:{MODEL}" for r in records)
    text = json.dumps(records)
    assert PROVIDER_KEY not in text and llm_broker.credentials["alice"] not in text


def _audit_records(broker: LlmBroker, **match: str) -> list[dict[str, object]]:
    records = [
        json.loads(line)
        for path in broker.audit_dir.glob("audit-*.jsonl")
        for line in audit_text(path).splitlines()
        if line.strip()
    ]
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


async def test_usage_lands_in_the_agent_budget(llm_broker: LlmBroker) -> None:
    client = llm_broker.client("bob")
    for _ in range(2):
        await client.chat.completions.create(model=MODEL, messages=_messages(), max_tokens=10)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=MODEL, messages=_messages(), max_tokens=10)
    assert caught.value.code == "insufficient_quota"
    assert "agent:bob calls per day" in caught.value.message
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        "budgets",
        "--url",
        llm_broker.url,
        f"--admin-token={llm_broker.admin_token}",  # "=": a token may start with "-"
        "show",
        "--agent",
        "bob",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(cli.communicate(), 30)
    assert cli.returncode == 0, err.decode()
    [budget] = json.loads(out)["budgets"]
    assert (budget["scope"], budget["metric"], budget["window"]) == ("agent:bob", "calls", "day")
    assert (budget["used"], budget["reserved"], budget["remaining"]) == (2, 0, 0)


async def test_delegated_calls_are_charged_to_the_tree(llm_broker: LlmBroker) -> None:
    """alice asks echo (through the broker); echo calls the LLM with the token it received.

    The tree's budget (2 calls a day) counts every call in the tree: alice's hop to echo, then
    echo's first LLM call; the second LLM call is refused."""
    marker = uuid.uuid4().hex
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        headers = {"Authorization": f"Bearer {llm_broker.credentials['alice']}"}
        params = {"message": user_message(marker)}
        url = f"{llm_broker.url}/agents/echo/jsonrpc"
        response = await jsonrpc(http, url, "SendMessage", params, headers=headers)
        assert response.status_code == 200, response.text
        [hop] = await recorded_requests(http, llm_broker.echo_url, marker)
    token = {k.lower(): v for k, v in hop["headers"]}["a2a-delegation"]
    echo = llm_broker.client("echo", default_headers={"A2A-Delegation": token})
    await echo.chat.completions.create(model=MODEL, messages=_messages(), max_tokens=10)
    with pytest.raises(openai.RateLimitError) as caught:
        await echo.chat.completions.create(model=MODEL, messages=_messages(), max_tokens=10)
    assert caught.value.code == "insufficient_quota"
    assert "tree:" in caught.value.message


async def test_rate_limit_is_a_retryable_rate_limit_error(llm_broker: LlmBroker) -> None:
    client = llm_broker.client("gated")  # an agent no other test here calls with
    with pytest.raises(openai.RateLimitError) as caught:
        for _ in range(5):  # burst 3, then 0.5/s
            await client.chat.completions.create(model=MODEL, messages=_messages(), max_tokens=5)
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.response.headers["x-should-retry"] == "true"


async def test_unknown_model_and_bad_key(llm_broker: LlmBroker) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await llm_broker.client("alice").chat.completions.create(
            model="no-such-model", messages=_messages()
        )
    assert missing.value.code == "model_not_found"
    llm_broker.credentials["nobody"] = "not-a-credential"
    with pytest.raises(openai.AuthenticationError):
        await llm_broker.client("nobody").models.list()
