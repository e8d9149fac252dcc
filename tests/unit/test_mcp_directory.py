"""MCP servers registered at run time: the directory over a store, its checks, the held
secret, and each process's table kept current (two directories over one store stand for two
replicas; the control channel that tells them is tested end to end)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from broker.errors import EgressDeniedError
from broker.mcp.directory import McpServerChanges, McpServerDirectory, McpServerRegistration
from broker.mcp.errors import (
    McpServerExistsError,
    McpServerInvalidError,
    McpServerNotFoundError,
    McpSessionNotFoundError,
)
from broker.mcp.held_credentials import HeldCredentials, fingerprint
from broker.mcp.servers import McpServerRegistry
from broker.mcp.sessions import UpstreamSession
from broker.outbound.egress import EgressPolicy
from broker.settings import EgressSettings
from broker.settings_mcp import McpCredential, McpServerSettings
from broker.stores.mcp_servers import McpServerRecord, MemoryMcpServerStore

SECRET = b"the broker's seal secret"
CONFIGURED = {"github": McpServerSettings(url="http://127.0.0.1:9/gh")}


def directory(
    store: MemoryMcpServerStore,
    environ: dict[str, str] | None = None,
    notified: list[str] | None = None,
) -> McpServerDirectory:
    egress = EgressPolicy(EgressSettings(allow_loopback=True))

    async def notify(name: str) -> None:
        if notified is not None:
            notified.append(name)

    return McpServerDirectory(
        McpServerRegistry(egress.check_url), store, egress, HeldCredentials(SECRET),
        configured=CONFIGURED, environ=environ or {}, notify=notify)


def bearer(value: str = "tok-1") -> McpCredential:
    return McpCredential(kind="bearer", value=value)


def spec(name: str = "docs", **fields: object) -> McpServerRegistration:
    given: dict[str, object] = {"url": "http://127.0.0.1:9/mcp", "credential": bearer()}
    return McpServerRegistration(name=name, **(given | fields))  # type: ignore[arg-type]


async def test_a_registration_is_served_here_at_once_and_told_to_the_others() -> None:
    store, told = MemoryMcpServerStore(), []
    here = directory(store, notified=told)
    record = await here.register(spec(description="the docs"))
    server = here.registry.get("docs")
    assert server.auth_headers == {"authorization": "Bearer tok-1"}
    assert server.source == "api" and server.epoch == record.epoch != ""
    assert told == ["docs"]
    there = directory(store)
    with pytest.raises(McpServerNotFoundError):
        there.registry.get("docs")  # until told
    await there.sync("docs")
    assert there.registry.get("docs").auth_headers == {"authorization": "Bearer tok-1"}


async def test_the_secret_is_never_stored_or_shown_in_plain_text() -> None:
    store = MemoryMcpServerStore()
    here = directory(store)
    await here.register(spec(credential=McpCredential(kind="header", header="X-Key",
                                                      value="very-secret")))
    stored = await store.get("docs")
    assert stored is not None and "very-secret" not in repr(stored)
    shown = here.summary(await here.get("docs"))
    assert "very-secret" not in repr(shown)
    assert shown["credential"] == {"kind": "header", "header": "x-key",
                                   "fingerprint": fingerprint("very-secret")}
    assert here.registry.get("docs").auth_headers == {"x-key": "very-secret"}


async def test_a_sealed_secret_opens_only_for_its_server_under_the_same_key() -> None:
    held = HeldCredentials(SECRET)
    sealed = held.seal("docs", "s3cret")
    assert held.open("docs", sealed) == "s3cret"
    assert held.open("other", sealed) is None
    assert HeldCredentials(b"another key").open("docs", sealed) is None
    assert held.open("docs", sealed[:-4] + "AAAA") is None
    assert held.seal("docs", "s3cret") != sealed  # a fresh nonce each time


async def test_a_secret_named_by_env_stays_in_the_environment() -> None:
    store = MemoryMcpServerStore()
    here = directory(store, {"DOCS_TOKEN": "from-env"})
    await here.register(spec(credential=McpCredential(kind="bearer", env="DOCS_TOKEN")))
    stored = await store.get("docs")
    assert stored is not None and stored.credential_env == "DOCS_TOKEN"
    assert stored.credential_sealed == "" and "from-env" not in repr(stored)
    assert here.registry.get("docs").auth_headers == {"authorization": "Bearer from-env"}
    # A replica without the variable does not serve the server (and says why in its log).
    there = directory(store, {})
    await there.sync()
    with pytest.raises(McpServerNotFoundError):
        there.registry.get("docs")
    assert here.summary(await here.get("docs"))["served"] is True
    assert there.summary(await there.get("docs"))["served"] is False


@pytest.mark.parametrize(("credential", "says"), [
    (McpCredential(kind="bearer"), "one of the two"),
    (McpCredential(kind="bearer", value="a", env="B"), "one of the two"),
    (McpCredential(kind="none", value="a"), "takes no value"),
    (McpCredential(kind="bearer", env="UNSET_VAR"), r"\$UNSET_VAR is not set"),
    (McpCredential(kind="bearer", env="not a name"), "environment variable's name"),
    (McpCredential(kind="bearer", value="line\r\nX-Evil: 1"), "no control characters"),
    (McpCredential(kind="header", header="Content-Type", value="x"), "cannot carry"),
    (McpCredential(kind="header", header="Mcp-Session-Id", value="x"), "cannot carry"),
    (McpCredential(kind="header", header="A2A-Delegation", value="x"), "cannot carry"),
    (McpCredential(kind="header", header="bad header", value="x"), "cannot carry"),
])
async def test_a_credential_that_cannot_work_is_refused(
    credential: McpCredential, says: str
) -> None:
    store = MemoryMcpServerStore()
    with pytest.raises(McpServerInvalidError, match=says) as refused:
        await directory(store).register(spec(credential=credential))
    assert refused.value.metadata["field"] == "credential"
    assert await store.list() == []


async def test_names_urls_and_egress_are_checked_as_for_configured_servers() -> None:
    store = MemoryMcpServerStore()
    here = directory(store)
    with pytest.raises(McpServerInvalidError, match="name"):
        await here.register(spec("Bad__name"))
    with pytest.raises(McpServerInvalidError, match="absolute http"):
        await here.register(spec(url="ftp://127.0.0.1/mcp"))
    strict = McpServerDirectory(
        McpServerRegistry(EgressPolicy(EgressSettings()).check_url), store,
        EgressPolicy(EgressSettings()), HeldCredentials(SECRET), configured={}, environ={})
    with pytest.raises(EgressDeniedError) as denied:
        await strict.register(spec(url="http://169.254.169.254/mcp"))
    assert denied.value.metadata["server"] == "docs"
    assert await store.list() == []


async def test_a_configured_server_is_shown_but_never_changed_through_the_api() -> None:
    store = MemoryMcpServerStore()
    here = directory(store)
    with pytest.raises(McpServerExistsError, match=r"\[mcp.servers.github\]"):
        await here.register(spec("github"))
    for change in (
        here.update("github", McpServerChanges(description="x")),
        here.rotate("github", bearer()),
        here.remove("github"),
    ):
        with pytest.raises(McpServerInvalidError, match="declared in the configuration"):
            await change
    await here.register(spec("docs"))
    listed = [here.summary(r) for r in await here.list()]
    assert [(s["name"], s["source"]) for s in listed] == [("docs", "api"), ("github", "config")]


async def test_a_registration_is_refused_when_the_name_is_taken() -> None:
    store = MemoryMcpServerStore()
    await directory(store).register(spec())
    with pytest.raises(McpServerExistsError):
        await directory(store).register(spec(url="http://127.0.0.1:10/mcp"))
    stored = await store.get("docs")
    assert stored is not None and stored.url == "http://127.0.0.1:9/mcp"


async def test_an_update_changes_only_what_is_given_and_a_new_url_a_new_epoch() -> None:
    store = MemoryMcpServerStore()
    here = directory(store)
    first = await here.register(spec())
    described = await here.update("docs", McpServerChanges(description="now described",
                                                           aggregate=False))
    assert described.epoch == first.epoch and described.url == first.url
    assert described.updated_at > first.updated_at
    assert here.registry.aggregated() == []
    moved = await here.update("docs", McpServerChanges(url="http://127.0.0.1:10/mcp"))
    assert moved.epoch != first.epoch
    assert here.registry.get("docs").url == "http://127.0.0.1:10/mcp"
    with pytest.raises(McpServerInvalidError, match="Nothing to change"):
        await here.update("docs", McpServerChanges())
    with pytest.raises(McpServerNotFoundError):
        await here.update("nope", McpServerChanges(description="x"))


async def test_rotating_the_credential_uses_the_new_one_and_ends_old_sessions() -> None:
    store = MemoryMcpServerStore()
    here = directory(store)
    first = await here.register(spec())
    opened = {"docs": UpstreamSession("upstream-1", "2025-11-25", first.epoch)}
    here.registry.check_sessions(opened)  # still the same server
    rotated = await here.rotate("docs", bearer("tok-2"))
    assert here.registry.get("docs").auth_headers == {"authorization": "Bearer tok-2"}
    assert rotated.credential_fingerprint == fingerprint("tok-2") != first.credential_fingerprint
    with pytest.raises(McpSessionNotFoundError):
        here.registry.check_sessions(opened)
    unchanged = await here.rotate("docs", McpCredential())
    assert unchanged.credential_kind == "none" and here.registry.get("docs").auth_headers == {}


async def test_removal_is_seen_by_every_process_that_re_reads() -> None:
    store = MemoryMcpServerStore()
    here, there = directory(store), directory(store)
    await here.register(spec())
    await there.sync()
    await here.remove("docs")
    with pytest.raises(McpServerNotFoundError):
        here.registry.get("docs")
    await there.sync("docs")
    with pytest.raises(McpServerNotFoundError):
        there.registry.get("docs")
    with pytest.raises(McpServerNotFoundError):
        await here.remove("docs")
    # A full re-read (after a gap on the channel) forgets what is gone too.
    await here.register(spec())
    await there.sync()
    await store.delete("docs")
    await there.sync()
    assert there.registry.all() == []


async def test_a_store_record_shadowed_by_configuration_is_ignored() -> None:
    store = MemoryMcpServerStore()
    await directory(store).register(spec("github-x"))
    record = await store.get("github-x")
    assert record is not None
    await store.create(msgspec.structs.replace(record, name="github"))
    here = directory(store)
    await here.sync()
    assert [s.name for s in here.registry.all()] == ["github-x"]  # the configured one is
    # added by registry_from_settings at start-up, never by the store


class SlowListStore(MemoryMcpServerStore):
    """A store whose list is read, then answered only after ``release`` (a slow round trip)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def list(self) -> list[McpServerRecord]:
        snapshot = await super().list()
        await self.release.wait()
        return snapshot


async def test_a_full_re_read_that_straddles_a_change_does_not_put_the_old_record_back() -> None:
    store = SlowListStore()
    writer, reader = directory(store), directory(store)
    await writer.register(spec())
    await reader.sync("docs")
    resync = asyncio.create_task(reader.sync())  # reads the list with the first credential
    await asyncio.sleep(0)
    await writer.rotate("docs", bearer("tok-2"))
    await reader.sync("docs")  # the control message: the new credential
    store.release.set()
    await resync
    assert reader.registry.get("docs").auth_headers == {"authorization": "Bearer tok-2"}
