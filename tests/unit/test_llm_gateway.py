"""The LLM endpoint in process: Litestar routes + memory stores + the fake provider + the real
openai client (through httpx's ASGI transport)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import httpx
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from e2e.fake_llm import ANSWER, COMPLETION_TOKENS, PROMPT_TOKENS, FakeLlm
from litestar import Litestar

from broker.audit.recorder import AuditRecorder
from broker.budgets.model import Limit, Scope, Usage
from broker.delegation.tokens import TokenMinter, TokenVerifier
from broker.errors import StoreUnavailableError
from broker.http.llm import llm_route_handlers
from broker.identity.credentials import credential_digest
from broker.identity.keys import BrokerKeys
from broker.outbound.http11 import Http11Transport
from broker.pipeline.llm import LlmGateway, LlmParts
from broker.policy.engine import PolicyEngine
from broker.policy.runtime import DEFAULT_MODEL
from broker.settings import EgressSettings, LimitSettings, RegistrySettings
from broker.settings_containment import BreakerSettings, ContainmentSettings
from broker.settings_llm import LlmProvider, LlmSettings
from broker.stages.authenticate import Authenticate
from broker.stores.budget_base import BudgetLedger, BudgetRefusal, Reservation
from broker.stores.memory import MemoryBackend
from broker.stores.memory_budget import MemoryBudgetLedger, MemoryRateLimiter

ISSUER = "http://broker.test"
KEYS = BrokerKeys(Ed25519PrivateKey.generate())
POLICY = "g, bob, role:team-b\np, role:team-b, *, *, allow\n"


@dataclass
class Limits:
    """The budget scopes of a call (stand-in for the budget configuration)."""

    agents: dict[str, tuple[Limit, ...]] = field(default_factory=dict)
    teams: dict[str, tuple[Limit, ...]] = field(default_factory=dict)
    tree: tuple[Limit, ...] = ()

    async def for_llm_call(
        self, agent: str, teams: tuple[str, ...], tree: str | None, target: str
    ) -> tuple[Scope, ...]:
        scopes = [Scope("agent", agent, self.agents.get(agent, ()))]
        scopes += [Scope("team", t, self.teams[t]) for t in teams if t in self.teams]
        if tree is not None and self.tree:
            scopes.append(Scope("tree", tree, self.tree))
        return tuple(s for s in scopes if s.limits)


class DownLedger(BudgetLedger):
    async def reserve(
        self, scopes: Sequence[Scope], amounts: Usage, *, ttl_s: int
    ) -> Reservation | BudgetRefusal:
        raise StoreUnavailableError

    async def settle(self, reservation: Reservation, actual: Usage) -> None:
        raise StoreUnavailableError

    async def release(self, reservation: Reservation) -> None:
        raise StoreUnavailableError

    async def expire(self) -> int:
        return 0

    async def status(self, scopes: Sequence[Scope]) -> list:  # type: ignore[type-arg]
        return []


@dataclass
class World:
    fake: FakeLlm
    ledger: BudgetLedger
    limits: Limits
    credentials: dict[str, str]
    app: Litestar
    llm: LlmSettings

    def client(self, agent: str, **kwargs: object) -> openai.AsyncOpenAI:
        transport = httpx.ASGITransport(app=self.app)
        return openai.AsyncOpenAI(
            base_url="http://broker.test/v1",
            api_key=self.credentials[agent],
            http_client=httpx.AsyncClient(transport=transport),
            max_retries=0,
            **kwargs,  # type: ignore[arg-type]
        )


async def _world(
    *,
    llm: LlmSettings | None = None,
    ledger: BudgetLedger | None = None,
    policy: bool = False,
    containment: ContainmentSettings | None = None,
) -> tuple[World, Http11Transport]:
    fake = FakeLlm()
    url = await fake.start()
    provider = LlmProvider(
        base_url=url,
        models=("fake-small",),
        price_in_per_mtok=2.0,
        price_out_per_mtok=10.0,
        timeout_s=1.0,
        key="provider-secret",
    )
    llm = llm or LlmSettings()
    llm = LlmSettings(
        **{**{f: getattr(llm, f) for f in llm.__struct_fields__}, "providers": {"fake": provider}}
    )
    stores = MemoryBackend().stores()
    credentials = {name: f"cred-{name}" for name in ("alice", "bob", "carol")}
    for name, cred in credentials.items():
        await stores.credentials.replace(name, credential_digest(cred))
    engine = None
    if policy:
        engine = PolicyEngine(DEFAULT_MODEL.read_text())
        engine.swap(engine.load_text(POLICY, "policy.csv"))
    limits = Limits()
    limits_settings = LimitSettings(upstream_timeout_s=1.0, sse_idle_timeout_s=1.0)
    client = Http11Transport(
        EgressSettings(allow_loopback=True), limits_settings, RegistrySettings()
    )
    ledger = ledger or MemoryBudgetLedger()
    gateway = LlmGateway(
        LlmParts(
            llm=llm,
            limits=limits_settings,
            authenticate=Authenticate(stores.credentials, stores.registry),
            policy=engine,
            verifier=TokenVerifier(KEYS, ISSUER),
            revocations=stores.revocations,
            client=client,
            ledger=ledger,
            limiter=MemoryRateLimiter(),
            scopes=limits,
            audit=AuditRecorder(None),
            containment=containment or ContainmentSettings(),
        )
    )
    app = Litestar(route_handlers=llm_route_handlers, openapi_config=None)
    app.state.runtime = SimpleNamespace(llm=gateway)
    return World(fake, ledger, limits, credentials, app, llm), client


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w, client = await _world()
    yield w
    await client.close()
    await w.fake.stop()


async def _used(world: World, scope: Scope) -> dict[str, int]:
    return {s.metric: s.used for s in await world.ledger.status([scope])}


def _messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": "hello"}]


async def test_chat_completion_reaches_the_provider_with_the_broker_key(world: World) -> None:
    reply = await world.client("alice").chat.completions.create(
        model="fake-small", messages=_messages()
    )
    assert reply.choices[0].message.content == ANSWER
    assert [r.authorization for r in world.fake.recorded] == ["Bearer provider-secret"]
    assert world.fake.recorded[0].body["messages"] == _messages()


async def test_every_call_passes_on_its_own_trace_with_the_broker_key(world: World) -> None:
    """The provider headers are built once per provider and kind; what a call adds (its
    trace) never stays behind for the next."""
    client = world.client("alice")
    for _ in range(2):
        await client.chat.completions.create(model="fake-small", messages=_messages())
    stream = await client.chat.completions.create(
        model="fake-small", messages=_messages(), stream=True
    )
    async for _chunk in stream:
        pass
    recorded = world.fake.recorded
    assert [r.authorization for r in recorded] == ["Bearer provider-secret"] * 3
    traces = [r.traceparent for r in recorded]
    assert all(t and t.startswith("00-") for t in traces)
    assert len({t.split("-")[1] for t in traces if t}) == 3  # three calls, three traces


async def test_stream_is_relayed_without_the_usage_chunk_nobody_asked_for(world: World) -> None:
    stream = await world.client("alice").chat.completions.create(
        model="fake-small", messages=_messages(), stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
    assert world.fake.recorded[0].body["stream_options"] == {"include_usage": True}


async def test_stream_keeps_the_usage_chunk_when_asked(world: World) -> None:
    stream = await world.client("alice").chat.completions.create(
        model="fake-small",
        messages=_messages(),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == COMPLETION_TOKENS


@pytest.mark.parametrize("stream", [False, True])
async def test_usage_is_settled_into_the_agent_budget(world: World, stream: bool) -> None:
    limits = (Limit("tokens_out", "day", 1000), Limit("cost_micro", "day", 10**6))
    world.limits.agents["alice"] = limits
    response = await world.client("alice").chat.completions.create(
        model="fake-small", messages=_messages(), stream=stream, max_tokens=20
    )
    if stream:
        _ = [chunk async for chunk in response]  # type: ignore[union-attr]
    used = await _used(world, Scope("agent", "alice", limits))
    cost = PROMPT_TOKENS * 2 + COMPLETION_TOKENS * 10
    assert used == {"tokens_out": COMPLETION_TOKENS, "cost_micro": cost}


async def test_usage_is_counted_when_the_provider_reports_none(world: World) -> None:
    limits = (Limit("tokens_out", "day", 1000),)
    world.limits.agents["alice"] = limits
    world.fake.mode.omit_usage = True
    await world.client("alice").chat.completions.create(
        model="fake-small", messages=_messages(), max_tokens=20
    )
    used = await _used(world, Scope("agent", "alice", limits))
    assert used["tokens_out"] == -(-len(ANSWER) // 3)


async def test_a_delegated_call_is_charged_to_the_tree_too(world: World) -> None:
    world.limits.tree = (Limit("calls", "day", 10),)
    token, claims = TokenMinter(KEYS, ISSUER, 60).mint_origin("bob", "alice", "a2a:SendMessage")
    client = world.client("alice", default_headers={"A2A-Delegation": token})
    await client.chat.completions.create(model="fake-small", messages=_messages())
    assert await _used(world, Scope("tree", claims.tree, world.limits.tree)) == {"calls": 1}


async def test_exhausted_budget_is_insufficient_quota_naming_the_budget(world: World) -> None:
    world.limits.agents["alice"] = (Limit("tokens_out", "hour", 10),)
    with pytest.raises(openai.RateLimitError) as caught:
        await world.client("alice").chat.completions.create(
            model="fake-small", messages=_messages(), max_tokens=50
        )
    assert caught.value.code == "insufficient_quota"
    assert "agent:alice tokens_out per hour" in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert world.fake.recorded == []


async def test_rate_limit_is_retryable_with_retry_after() -> None:
    world, client = await _world(llm=LlmSettings(rate_per_s=0.5, burst=1))
    try:
        api = world.client("alice")
        await api.chat.completions.create(model="fake-small", messages=_messages())
        with pytest.raises(openai.RateLimitError) as caught:
            await api.chat.completions.create(model="fake-small", messages=_messages())
        assert caught.value.code == "rate_limit_exceeded"
        assert int(caught.value.response.headers["retry-after"]) >= 1
        assert len(world.fake.recorded) == 1
    finally:
        await client.close()
        await world.fake.stop()


async def test_store_down_refuses_with_503_and_forwards_nothing() -> None:
    world, client = await _world(ledger=DownLedger())
    world.limits.agents["alice"] = (Limit("calls", "day", 10),)
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            await world.client("alice").chat.completions.create(
                model="fake-small", messages=_messages()
            )
        assert caught.value.status_code == 503
        assert world.fake.recorded == []
    finally:
        await client.close()
        await world.fake.stop()


async def test_unknown_model_is_model_not_found(world: World) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await world.client("alice").chat.completions.create(model="nope", messages=_messages())
    assert caught.value.code == "model_not_found"


async def test_wrong_credential_is_invalid_api_key(world: World) -> None:
    world.credentials["mallory"] = "not-a-credential"
    with pytest.raises(openai.AuthenticationError) as caught:
        await world.client("mallory").chat.completions.create(
            model="fake-small", messages=_messages()
        )
    assert caught.value.code == "invalid_api_key"


async def test_policy_decides_who_may_use_a_model() -> None:
    world, client = await _world(policy=True)
    try:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await world.client("alice").chat.completions.create(
                model="fake-small", messages=_messages()
            )
        assert caught.value.code == "model_not_allowed"
        reply = await world.client("bob").chat.completions.create(
            model="fake-small", messages=_messages()
        )
        assert reply.choices[0].message.content == ANSWER
        assert [m.id async for m in world.client("alice").models.list()] == []
        assert [m.id async for m in world.client("bob").models.list()] == ["fake-small"]
    finally:
        await client.close()
        await world.fake.stop()


async def test_team_budget_with_policy() -> None:
    world, client = await _world(policy=True)
    limits = (Limit("calls", "day", 5),)
    world.limits.teams["role:team-b"] = limits
    try:
        await world.client("bob").chat.completions.create(model="fake-small", messages=_messages())
        assert await _used(world, Scope("team", "role:team-b", limits)) == {"calls": 1}
    finally:
        await client.close()
        await world.fake.stop()


@pytest.mark.parametrize(
    ("mode", "error", "status"),
    [
        ({"fail": 500}, openai.InternalServerError, 502),
        ({"hang": True}, openai.InternalServerError, 504),
    ],
)
async def test_provider_failures_release_the_reservation(
    world: World, mode: dict[str, object], error: type[openai.APIStatusError], status: int
) -> None:
    limits = (Limit("calls", "day", 10),)
    world.limits.agents["alice"] = limits
    for key, value in mode.items():
        setattr(world.fake.mode, key, value)
    with pytest.raises(error) as caught:
        await world.client("alice").chat.completions.create(
            model="fake-small", messages=_messages()
        )
    assert caught.value.status_code == status
    [status_row] = await world.ledger.status([Scope("agent", "alice", limits)])
    assert (status_row.used, status_row.reserved) == (0, 0)


async def test_embeddings(world: World) -> None:
    limits = (Limit("tokens_in", "day", 100),)
    world.limits.agents["alice"] = limits
    reply = await world.client("alice").embeddings.create(model="fake-small", input="hi")
    assert reply.data[0].embedding == [0.1, 0.2, 0.3]
    assert world.fake.recorded[0].authorization == "Bearer provider-secret"
    assert (await _used(world, Scope("agent", "alice", limits)))["tokens_in"] == 8


# --- the provider's circuit breaker ----------------------------------------------------------

OPEN_S = 0.3
BREAKER = BreakerSettings(failures=3, window_s=10.0, open_s=OPEN_S)


@pytest.fixture
async def breaking_world() -> AsyncIterator[World]:
    """A world whose provider breaker opens after 3 failures, for OPEN_S."""
    w, client = await _world(containment=ContainmentSettings(breaker=BREAKER))
    yield w
    await client.close()
    await w.fake.stop()


async def _chat(world: World) -> object:
    return await world.client("alice").chat.completions.create(
        model="fake-small", messages=_messages()
    )


async def test_a_failing_provider_is_refused_at_once_then_probed_and_closed(
    breaking_world: World,
) -> None:
    world = breaking_world
    world.fake.mode.fail = 500
    for _ in range(3):
        with pytest.raises(openai.InternalServerError) as failed:
            await _chat(world)
        assert failed.value.status_code == 502
    at_provider = len(world.fake.recorded)

    with pytest.raises(openai.APIStatusError) as refused:
        await _chat(world)
    assert refused.value.status_code == 503
    assert refused.value.code == "llm_provider_circuit_open"
    assert refused.value.response.headers["retry-after"] == "1"
    assert refused.value.response.headers["x-should-retry"] == "true"
    assert len(world.fake.recorded) == at_provider  # the provider was not called

    world.fake.mode.fail = 0
    await asyncio.sleep(OPEN_S)  # the breaker's cool-down: then one probe goes through
    await _chat(world)
    await _chat(world)  # closed again
    assert len(world.fake.recorded) == at_provider + 2


async def test_provider_rate_limiting_does_not_open_the_circuit(breaking_world: World) -> None:
    world = breaking_world
    world.fake.mode.fail = 429
    for _ in range(5):
        with pytest.raises(openai.RateLimitError):
            await _chat(world)
    world.fake.mode.fail = 0
    await _chat(world)  # answered, not refused
