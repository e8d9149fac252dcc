"""The agent directory over the in-memory store: what an admin (or the start-up loader) sees."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest
from a2a.client.card_resolver import parse_agent_card
from a2a.utils.signing import create_signature_verifier
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.api_jwk import PyJWK

from broker.errors import (
    AgentCardFetchError,
    AgentExistsError,
    AgentNameConfusableError,
    AgentNotFoundError,
    EgressDeniedError,
    InvalidAdminRequestError,
    InvalidAgentCardError,
)
from broker.identity.cards import CardVerifier
from broker.identity.credentials import CREDENTIAL_PREFIX, credential_digest
from broker.identity.directory import AgentDirectory, DeclarativeCardError
from broker.identity.keys import BrokerKeys
from broker.identity.names import skeleton
from broker.settings import AgentCredentialSettings, EgressSettings, ServerSettings, Settings
from broker.stores.base import Stores
from broker.stores.memory import MemoryBackend

CARDS = Path(__file__).parent.parent / "fixtures" / "cards"
PUBLIC_URL = "https://broker.example"
CARD_URL = "https://weather.example.org/.well-known/agent-card.json"


def load_card(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CARDS / f"{name}.json").read_text(encoding="utf-8"))
    return data


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class CardServer:
    """Stands in for the egress-safe fetcher: serves documents by URL and records the calls."""

    def __init__(self) -> None:
        self.documents: dict[str, bytes] = {}
        self.fetched: list[str] = []

    async def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        if url not in self.documents:
            raise AgentCardFetchError(detail=f"no document at {url}")
        return self.documents[url]


@pytest.fixture
def stores() -> Stores:
    return MemoryBackend().stores()


@pytest.fixture
def card_server() -> CardServer:
    return CardServer()


@pytest.fixture
def keys() -> BrokerKeys:
    return BrokerKeys(Ed25519PrivateKey.generate(), jwks_url=f"{PUBLIC_URL}/.well-known/jwks.json")


def make_directory(
    stores: Stores,
    keys: BrokerKeys,
    card_server: CardServer,
    *,
    agents: dict[str, str] | None = None,
    clock: FakeClock | None = None,
    allow_loopback: bool = False,
) -> AgentDirectory:
    settings = Settings(
        server=ServerSettings(public_url=PUBLIC_URL),
        egress=EgressSettings(allow_loopback=allow_loopback),
        agents={
            name: AgentCredentialSettings(credential_sha256=digest)
            for name, digest in (agents or {}).items()
        },
    )
    return AgentDirectory(
        settings, stores, keys, CardVerifier({}), card_server.fetch, clock=clock or FakeClock()
    )


@pytest.fixture
def directory(stores: Stores, keys: BrokerKeys, card_server: CardServer) -> AgentDirectory:
    return make_directory(stores, keys, card_server)


# --- Register, update, status, delete, credentials ----------------------------------------------


async def test_register_stores_the_card_and_only_the_credential_digest(
    directory: AgentDirectory, stores: Stores
) -> None:
    record, credential = await directory.register("weather", card=load_card("weather_v1"))

    assert credential.startswith(CREDENTIAL_PREFIX)
    assert len(credential) > len(CREDENTIAL_PREFIX) + 40
    assert await stores.credentials.lookup(credential_digest(credential)) == "weather"
    assert await stores.credentials.lookup(credential) is None
    assert record == await directory.get("weather")
    assert (record.status, record.source, record.card_url) == ("active", "api", "")
    assert record.jsonrpc_url == "https://weather.example.org/a2a/jsonrpc"
    assert record.rest_url == "https://weather.example.org/a2a/rest"
    assert json.loads(record.card_json)["name"] == "Weather Agent"


async def test_register_refuses_a_taken_name(directory: AgentDirectory) -> None:
    await directory.register("weather", card=load_card("weather_v1"))

    with pytest.raises(AgentExistsError):
        await directory.register("weather", card=load_card("legacy_v03"))


@pytest.mark.parametrize("name", ["", "-weather", "_w", "Weather", "a" * 65, "a/b", "a.b", "é"])
async def test_register_refuses_invalid_names(directory: AgentDirectory, name: str) -> None:
    with pytest.raises(InvalidAdminRequestError):
        await directory.register(name, card=load_card("weather_v1"))

    assert await directory.list() == []


@pytest.mark.parametrize("name", ["a", "0", "a" * 64, "weather_2-eu"])
async def test_register_accepts_valid_names(directory: AgentDirectory, name: str) -> None:
    record, _ = await directory.register(name, card=load_card("weather_v1"))

    assert record.name == name


@pytest.mark.parametrize(
    "arguments",
    [{}, {"card": {"name": "x"}, "card_url": CARD_URL}, {"card_url": "file:///etc/passwd"}],
)
async def test_register_needs_exactly_one_card_source(
    directory: AgentDirectory, card_server: CardServer, arguments: dict[str, Any]
) -> None:
    with pytest.raises(InvalidAdminRequestError):
        await directory.register("weather", **arguments)

    assert card_server.fetched == []


async def test_register_from_a_card_url(directory: AgentDirectory, card_server: CardServer) -> None:
    card_server.documents[CARD_URL] = json.dumps(load_card("legacy_v03")).encode()

    record, _ = await directory.register("legacy", card_url=CARD_URL)

    assert card_server.fetched == [CARD_URL]
    assert record.card_url == CARD_URL
    assert record.jsonrpc_url == "http://legacy.example.org/a2a/jsonrpc"


async def test_fetched_documents_that_are_not_cards_are_refused(
    directory: AgentDirectory, card_server: CardServer
) -> None:
    card_server.documents[CARD_URL] = b"<html>not json</html>"

    with pytest.raises(InvalidAgentCardError, match="not valid JSON"):
        await directory.register("weather", card_url=CARD_URL)
    with pytest.raises(AgentCardFetchError):
        await directory.register("weather", card_url=CARD_URL + "?missing")

    assert await directory.list() == []


async def test_invalid_card_registers_nothing(directory: AgentDirectory, stores: Stores) -> None:
    with pytest.raises(InvalidAgentCardError):
        await directory.register("grpc", card=load_card("grpc_only"))

    assert await stores.registry.get("grpc") is None


async def test_update_replaces_the_card_but_keeps_credential_and_status(
    stores: Stores, keys: BrokerKeys, card_server: CardServer
) -> None:
    clock = FakeClock()
    directory = make_directory(stores, keys, card_server, clock=clock)
    first, credential = await directory.register("weather", card=load_card("weather_v1"))
    await directory.suspend("weather")
    card_server.documents[CARD_URL] = json.dumps(load_card("legacy_v03")).encode()

    updated = await directory.update("weather", card_url=CARD_URL)

    assert updated.status == "suspended"
    assert updated.created_at == first.created_at
    assert updated.updated_at > first.updated_at  # even though the clock stood still
    assert updated.jsonrpc_url == "http://legacy.example.org/a2a/jsonrpc"
    assert updated.card_url == CARD_URL
    assert await directory.get("weather") == updated
    assert await stores.credentials.lookup(credential_digest(credential)) == "weather"


async def test_update_of_an_unknown_agent_is_not_found(directory: AgentDirectory) -> None:
    with pytest.raises(AgentNotFoundError):
        await directory.update("ghost", card=load_card("weather_v1"))


async def test_suspend_resume_list(directory: AgentDirectory) -> None:
    await directory.register("b", card=load_card("weather_v1"))
    await directory.register("a", card=load_card("legacy_v03"))

    assert (await directory.suspend("a")).status == "suspended"
    assert [(r.name, r.status) for r in await directory.list()] == [
        ("a", "suspended"),
        ("b", "active"),
    ]
    assert (await directory.resume("a")).status == "active"


@pytest.mark.parametrize("operation", ["get", "suspend", "resume", "delete", "rotate_credential"])
async def test_unknown_agents_are_not_found(directory: AgentDirectory, operation: str) -> None:
    with pytest.raises(AgentNotFoundError):
        await getattr(directory, operation)("ghost")


async def test_delete_removes_the_agent_and_revokes_its_credential(
    directory: AgentDirectory, stores: Stores
) -> None:
    _, credential = await directory.register("weather", card=load_card("weather_v1"))

    await directory.delete("weather")

    assert await stores.credentials.lookup(credential_digest(credential)) is None
    with pytest.raises(AgentNotFoundError):
        await directory.served_card("weather")


async def test_rotated_credential_replaces_the_old_one_at_once(
    directory: AgentDirectory, stores: Stores
) -> None:
    _, old = await directory.register("weather", card=load_card("weather_v1"))

    new = await directory.rotate_credential("weather")

    assert new != old
    assert new.startswith(CREDENTIAL_PREFIX)
    assert await stores.credentials.lookup(credential_digest(old)) is None
    assert await stores.credentials.lookup(credential_digest(new)) == "weather"


async def test_summary_has_the_admin_api_shape(directory: AgentDirectory) -> None:
    record, _ = await directory.register("weather", card=load_card("weather_v1"))

    summary = directory.summary(record)

    assert set(summary) == {
        "name",
        "status",
        "source",
        "card_url",
        "jsonrpc_url",
        "rest_url",
        "created_at",
        "updated_at",
        "broker_card_url",
    }
    assert summary["broker_card_url"] == (
        f"{PUBLIC_URL}/agents/weather/.well-known/agent-card.json"
    )


# --- The served card ----------------------------------------------------------------------------


async def test_served_card_is_rewritten_signed_and_cached_until_the_agent_changes(
    directory: AgentDirectory, keys: BrokerKeys
) -> None:
    await directory.register("weather", card=load_card("weather_v1"))

    served = await directory.served_card("weather")

    assert await directory.served_card("weather") is served  # signed once, then cached
    urls = [i["url"] for i in served["supportedInterfaces"]]
    assert urls == [f"{PUBLIC_URL}/agents/weather/rest", f"{PUBLIC_URL}/agents/weather/jsonrpc"]
    public = PyJWK(keys.public_jwk())
    verify = create_signature_verifier(lambda _kid, _jku: public, ["EdDSA"])
    verify(parse_agent_card(copy.deepcopy(served)))

    await directory.update("weather", card=load_card("legacy_v03"))
    changed = await directory.served_card("weather")

    assert changed is not served
    assert changed["name"] == "Legacy Echo"
    verify(parse_agent_card(copy.deepcopy(changed)))


# --- Declarative cards --------------------------------------------------------------------------


def write_cards(folder: Path, **cards: dict[str, Any]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, card in cards.items():
        (folder / f"{name}.json").write_text(json.dumps(card), encoding="utf-8")
    return folder


async def test_declarative_cards_register_with_configured_digests(
    stores: Stores,
    keys: BrokerKeys,
    card_server: CardServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    credential = "a2ab_planner-secret"
    folder = write_cards(
        tmp_path / "cards", weather=load_card("weather_v1"), legacy=load_card("legacy_v03")
    )
    (folder / "README.md").write_text("not a card")
    directory = make_directory(
        stores, keys, card_server, agents={"weather": credential_digest(credential).upper()}
    )

    with caplog.at_level(logging.WARNING, logger="a2a_broker.directory"):
        records = await directory.load_declarative(folder)

    assert [r.name for r in records] == ["legacy", "weather"]
    assert {r.source for r in records} == {"declarative"}
    assert await stores.credentials.lookup(credential_digest(credential)) == "weather"
    assert any(
        "legacy" in r.getMessage() and "credential" in r.getMessage() for r in caplog.records
    )


async def test_declarative_load_is_idempotent_and_keeps_status(
    stores: Stores, keys: BrokerKeys, card_server: CardServer, tmp_path: Path
) -> None:
    clock = FakeClock()
    folder = write_cards(tmp_path / "cards", weather=load_card("weather_v1"))
    directory = make_directory(stores, keys, card_server, clock=clock)
    (first,) = await directory.load_declarative(folder)
    await directory.suspend("weather")
    clock.now += 60
    changed = load_card("weather_v1")
    changed["description"] = "Now with pollen counts."
    write_cards(folder, weather=changed)

    restarted = make_directory(stores, keys, card_server, clock=clock)
    (again,) = await restarted.load_declarative(folder)

    assert again.status == "suspended"
    assert again.created_at == first.created_at
    assert again.updated_at > first.updated_at
    assert json.loads(again.card_json)["description"] == "Now with pollen counts."
    assert [r.name for r in await restarted.list()] == ["weather"]


DECLARATIVE_PROBLEMS = {
    "bad file name": ({"Weather": "weather_v1"}, {}, "not a valid agent name"),
    "invalid card": ({"alpha": "weather_v1", "grpc": "grpc_only"}, {}, "supportedInterfaces"),
    "bad digest": ({"weather": "weather_v1"}, {"weather": "not-hex"}, "credential_sha256"),
}


@pytest.mark.parametrize("case", DECLARATIVE_PROBLEMS.values(), ids=DECLARATIVE_PROBLEMS.keys())
async def test_declarative_problems_name_the_file_or_entry(
    stores: Stores,
    keys: BrokerKeys,
    card_server: CardServer,
    tmp_path: Path,
    case: tuple[dict[str, str], dict[str, str], str],
) -> None:
    files, agents, problem = case
    folder = write_cards(tmp_path / "cards", **{n: load_card(c) for n, c in files.items()})
    directory = make_directory(stores, keys, card_server, agents=agents)

    with pytest.raises(DeclarativeCardError, match=problem):
        await directory.load_declarative(folder)

    assert await stores.registry.list() == []


async def test_declarative_files_that_are_not_json_or_too_large_are_refused(
    directory: AgentDirectory, tmp_path: Path
) -> None:
    folder = tmp_path / "cards"
    folder.mkdir()
    (folder / "broken.json").write_text("{")

    with pytest.raises(DeclarativeCardError, match=r"broken\.json"):
        await directory.load_declarative(folder)
    with pytest.raises(DeclarativeCardError, match="does not exist"):
        await directory.load_declarative(tmp_path / "missing")

    (folder / "broken.json").write_bytes(b" " * (Settings().registry.max_card_bytes + 1))
    with pytest.raises(DeclarativeCardError, match="larger than"):
        await directory.load_declarative(folder)


async def test_the_demo_cards_shipped_with_the_broker_load(
    stores: Stores, keys: BrokerKeys, card_server: CardServer
) -> None:
    shipped = Path(__file__).parent.parent.parent / "agent_cards"
    if not shipped.is_dir():
        pytest.skip("no agent_cards/ folder")
    # The demo's agents listen on loopback, and its config allows loopback egress.
    directory = make_directory(stores, keys, card_server, allow_loopback=True)

    records = await directory.load_declarative(shipped)

    assert records
    for record in records:
        assert msgspec.json.decode(record.card_json)["supportedInterfaces"]


async def test_configured_identity_without_a_card_is_caller_only(
    stores: Stores, keys: BrokerKeys, card_server: CardServer, tmp_path: Path
) -> None:
    credential = "a2ab_user-secret"
    folder = write_cards(tmp_path / "cards", weather=load_card("weather_v1"))
    directory = make_directory(
        stores, keys, card_server, agents={"app-user": credential_digest(credential)}
    )

    records = await directory.load_declarative(folder)

    assert [r.name for r in records] == ["weather"]  # not a target: no record, no card
    assert await stores.registry.get("app-user") is None
    assert await stores.credentials.lookup(credential_digest(credential)) == "app-user"


async def test_configured_identity_works_without_any_cards_dir(
    stores: Stores, keys: BrokerKeys, card_server: CardServer
) -> None:
    credential = "a2ab_user-secret"
    directory = make_directory(
        stores, keys, card_server, agents={"app-user": credential_digest(credential)}
    )

    assert await directory.load_declarative(None) == []

    assert await stores.credentials.lookup(credential_digest(credential)) == "app-user"
    assert await stores.registry.get("app-user") is None


async def test_an_entry_that_looks_like_a_typo_of_a_card_warns(
    stores: Stores,
    keys: BrokerKeys,
    card_server: CardServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = write_cards(tmp_path / "cards", weather=load_card("weather_v1"))
    directory = make_directory(
        stores, keys, card_server, agents={"waether": credential_digest("a2ab_x"), "idle": ""}
    )

    with caplog.at_level(logging.WARNING, logger="a2a_broker.directory"):
        await directory.load_declarative(folder)

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("[agents.waether]" in w and "did you mean [agents.weather]" in w for w in warnings)
    assert any("[agents.idle] has no credential_sha256" in w for w in warnings)


async def test_an_invalid_identity_name_is_refused_before_any_card_is_stored(
    stores: Stores, keys: BrokerKeys, card_server: CardServer, tmp_path: Path
) -> None:
    folder = write_cards(tmp_path / "cards", weather=load_card("weather_v1"))
    directory = make_directory(stores, keys, card_server, agents={"Bad Name": ""})

    with pytest.raises(DeclarativeCardError, match=r"\[agents.Bad Name\]"):
        await directory.load_declarative(folder)
    with pytest.raises(DeclarativeCardError, match=r"\[agents.Bad Name\]"):
        await directory.load_declarative(None)

    assert await stores.registry.list() == []


# --- Registration refuses what the broker would never call, and look-alike names (issue 11) ------

FORBIDDEN_HOSTS = [
    ("169.254.169.254", None),  # cloud metadata: no setting allows it
    ("[::ffff:169.254.169.254]", None),
    ("[fd00:ec2::254]", None),
    ("2852039166", None),  # 169.254.169.254 in decimal
    ("0251.0376.0251.0376", None),  # ... in octal
    ("0xa9.0xfe.0xa9.0xfe", None),  # ... in hex
    ("10.0.0.5", "[egress] allow_private"),
    ("192.168.1.1", "[egress] allow_private"),
    ("172.16.0.1", "[egress] allow_private"),
    ("127.0.0.1", "[egress] allow_loopback"),
    ("[::1]", "[egress] allow_loopback"),
    ("[::ffff:127.0.0.1]", "[egress] allow_loopback"),
    ("localhost", "[egress] allow_loopback"),  # a name that resolves to loopback
]


@pytest.mark.parametrize(("host", "setting"), FORBIDDEN_HOSTS)
async def test_a_card_pointing_where_egress_forbids_is_refused_at_registration(
    directory: AgentDirectory, stores: Stores, host: str, setting: str | None
) -> None:
    card = load_card("weather_v1")
    card["supportedInterfaces"][2]["url"] = f"http://{host}/a2a/jsonrpc"  # its JSON-RPC URL

    with pytest.raises(InvalidAgentCardError) as caught:
        await directory.register("weather", card=card)

    [issue] = caught.value.data["errors"]  # type: ignore[index]
    assert issue["field"] == "supportedInterfaces[2].url"
    assert (setting or "never connects") in issue["message"]
    assert await stores.registry.get("weather") is None


@pytest.mark.parametrize(("host", "setting"), FORBIDDEN_HOSTS)
async def test_a_card_url_where_egress_forbids_is_refused_before_fetching(
    directory: AgentDirectory, card_server: CardServer, host: str, setting: str | None
) -> None:
    with pytest.raises(EgressDeniedError) as caught:
        await directory.register("weather", card_url=f"http://{host}/card.json")

    assert (setting or "never connects") in caught.value.message
    assert card_server.fetched == []


@pytest.mark.parametrize(
    ("existing", "newcomer"),
    [("echo", "ech0"), ("hello", "he11o"), ("arm", "arrn"), ("ech0", "echo"), ("l1", "ll")],
)
async def test_a_name_confusable_with_a_registered_one_is_refused(
    directory: AgentDirectory, existing: str, newcomer: str
) -> None:
    await directory.register(existing, card=load_card("weather_v1"))

    with pytest.raises(AgentNameConfusableError) as caught:
        await directory.register(newcomer, card=load_card("weather_v1"))

    assert caught.value.metadata == {"agent": newcomer, "confusableWith": existing}


@pytest.mark.parametrize("name", ["\u0435cho", "echo\n", "Echo", "éch", "ech\u200bo", "-echo"])
async def test_names_outside_the_ascii_alphabet_are_refused(
    directory: AgentDirectory, name: str
) -> None:
    """Cyrillic look-alikes, a trailing newline, capitals, invisible characters: not names."""
    with pytest.raises(InvalidAdminRequestError):
        await directory.register(name, card=load_card("weather_v1"))


def test_skeletons_follow_uts39_and_ignore_case() -> None:
    assert skeleton("ech0") == skeleton("echo") == skeleton("ECHO")
    assert skeleton("m") == skeleton("rn")
    assert skeleton("1") == skeleton("l")
    assert skeleton("echo") != skeleton("ech")
