"""MCP servers registered at run time: register, update, rotate the held credential, remove.

The admin API calls ``McpServerDirectory``; it holds no HTTP. A registration is written to the
shared store (``broker.stores.mcp_servers``) and applied at once to this process's table of
servers (``McpServerRegistry``, read synchronously on every MCP request); every other worker
and replica is told over the control channel and re-reads that server from the store
(``sync``), as agent changes travel. Servers declared in ``[mcp.servers]`` are configuration:
the admin API shows them but never registers, changes or removes one of that name.

A URL or credential change gives the server a new epoch: sessions opened before it no longer
open (HTTP 404 ``MCP_SESSION_NOT_FOUND``, on which MCP clients start a new session), so no
upstream session opened with the old URL or credential is used again (decision 0070).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

import msgspec

from broker.errors import BrokerError
from broker.mcp.errors import McpServerExistsError, McpServerInvalidError, McpServerNotFoundError
from broker.mcp.held_credentials import HeldCredentials, credential_fields, fingerprint
from broker.mcp.servers import (
    McpServer,
    McpServerRegistry,
    auth_headers,
    check_name,
)
from broker.outbound.egress import EgressPolicy, check_registered_url
from broker.settings_mcp import McpCredential, McpServerSettings
from broker.stores.mcp_servers import McpServerRecord, McpServerStore

log = logging.getLogger("a2a_broker.mcp")
Notify = Callable[[str], Awaitable[None]]
_Positive = Annotated[float, msgspec.Meta(gt=0)]
_MAX_URL = 2048
_MAX_DESCRIPTION = 1000


class McpServerRegistration(McpServerSettings, frozen=True, forbid_unknown_fields=True,
                            kw_only=True):
    """A registration through the admin API: a ``[mcp.servers.NAME]`` entry and its name."""

    name: str


class McpServerChanges(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An update: only the fields given change (the credential changes by ``rotate``)."""

    url: str | msgspec.UnsetType = msgspec.UNSET
    description: str | msgspec.UnsetType = msgspec.UNSET
    aggregate: bool | msgspec.UnsetType = msgspec.UNSET
    timeout_s: _Positive | msgspec.UnsetType = msgspec.UNSET
    idle_timeout_s: _Positive | msgspec.UnsetType = msgspec.UNSET


async def _nobody(name: str) -> None:
    return None


class McpServerDirectory:
    """Run-time MCP servers in the shared store, kept applied to this process's registry."""

    def __init__(
        self,
        registry: McpServerRegistry,
        store: McpServerStore,
        egress: EgressPolicy,
        held: HeldCredentials,
        *,
        configured: Mapping[str, McpServerSettings],
        environ: Mapping[str, str],
        clock: Callable[[], float] = time.time,
        notify: Notify = _nobody,
    ) -> None:
        self.registry = registry
        self._store = store
        self._egress = egress
        self._held = held
        self._configured = configured
        self._environ = environ
        self._clock = clock
        self.notify = notify  # tells the other workers and replicas (the control channel)
        self._applied: dict[str, McpServerRecord] = {}
        # Moved by every change applied from one server's read: a full re-read whose list
        # was read across one is dropped, so it cannot put an older record back.
        self._generation = 0

    # --- Admin operations -----------------------------------------------------------------------

    async def register(self, spec: McpServerRegistration) -> McpServerRecord:
        """Store a new server. Raises ``McpServerInvalidError`` (name, URL, credential, a
        configured server's name), ``McpServerExistsError`` and ``EgressDeniedError``."""
        check_name(spec.name)
        if spec.name in self._configured:
            raise McpServerExistsError(
                f"An MCP server named {spec.name!r} is declared in the configuration"
                f" ([mcp.servers.{spec.name}]); choose another name, or change it there.",
                metadata={"server": spec.name, "source": "config"})
        _check_description(spec.description)
        await self._check_url(spec.name, spec.url)
        now = self._clock()
        record = McpServerRecord(
            name=spec.name, url=spec.url, epoch=_new_epoch(), description=spec.description,
            aggregate=spec.aggregate, timeout_s=spec.timeout_s,
            idle_timeout_s=spec.idle_timeout_s, created_at=now, updated_at=now,
            **credential_fields(spec.name, spec.credential, self._environ, self._held))
        if not await self._store.create(record):
            raise McpServerExistsError(metadata={"server": spec.name})
        await self._changed(record.name, record)
        log.info("MCP server %s registered (%s)", record.name, record.url)
        return record

    async def update(self, name: str, changes: McpServerChanges) -> McpServerRecord:
        """Change the given fields; a new URL is checked as at registration and ends the
        sessions opened before. Raises as ``register`` does, and ``McpServerNotFoundError``."""
        given = {k: v for k, v in msgspec.structs.asdict(changes).items()
                 if v is not msgspec.UNSET}
        if not given:
            raise McpServerInvalidError(
                "Nothing to change: give at least one of url, description, aggregate,"
                " timeout_s, idle_timeout_s (the credential changes by rotating it).",
                metadata={"server": name[:64]})
        current = await self._stored(name)
        if "description" in given:
            _check_description(given["description"])
        if "url" in given and given["url"] != current.url:
            await self._check_url(name, given["url"])
            given["epoch"] = _new_epoch()
        record = msgspec.structs.replace(current, **given, updated_at=self._stamp(current))
        return await self._replace(record)

    async def rotate(self, name: str, credential: McpCredential) -> McpServerRecord:
        """Hold a new credential for the server (sessions opened before end). Raises
        ``McpServerInvalidError`` and ``McpServerNotFoundError``."""
        current = await self._stored(name)
        record = msgspec.structs.replace(
            current, epoch=_new_epoch(), updated_at=self._stamp(current),
            **credential_fields(name, credential, self._environ, self._held))
        return await self._replace(record)

    async def remove(self, name: str) -> None:
        """Remove the server; its sessions are refused at once. ``McpServerNotFoundError``."""
        self._refuse_configured(name)
        if not await self._store.delete(name):
            raise McpServerNotFoundError(metadata={"server": name[:64]})
        await self._changed(name, None)
        log.info("MCP server %s removed", name)

    async def get(self, name: str) -> McpServerRecord:
        """A configured or run-time server; raises ``McpServerNotFoundError``."""
        if name in self._configured:
            return self._configured_record(name)
        record = await self._store.get(name)
        if record is None:
            raise McpServerNotFoundError(metadata={"server": name[:64]})
        return record

    async def list(self) -> builtins.list[McpServerRecord]:
        """Every server, configured and run-time, sorted by name."""
        stored = [r for r in await self._store.list() if r.name not in self._configured]
        configured = [self._configured_record(name) for name in self._configured]
        return sorted([*configured, *stored], key=lambda record: record.name)

    def summary(self, record: McpServerRecord) -> dict[str, Any]:
        """The admin API's view of a server: never the secret, only its kind and fingerprint."""
        credential: dict[str, str] = {"kind": record.credential_kind}
        if record.credential_kind == "header":
            credential["header"] = record.credential_header
        if record.credential_env:
            credential["env"] = record.credential_env
        if record.credential_fingerprint:
            credential["fingerprint"] = record.credential_fingerprint
        return {
            "name": record.name,
            "source": "config" if record.name in self._configured else "api",
            "url": record.url,
            "description": record.description,
            "aggregate": record.aggregate,
            "timeout_s": record.timeout_s,
            "idle_timeout_s": record.idle_timeout_s,
            "credential": credential,
            # Whether this replica serves it (not when it cannot read the secret or its egress
            # rules refuse the URL: its log says which).
            "served": self.registry.find(record.name) is not None,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
        }

    # --- Keeping this process's table current ---------------------------------------------------

    async def sync(self, name: str = "") -> None:
        """Re-read ``name`` (every server when empty) from the store into the table: another
        worker or replica changed it. Raises ``StoreUnavailableError``."""
        if not name:
            started = self._generation
            records = {r.name: r for r in await self._store.list()}
            if self._generation != started:
                return  # a change was applied meanwhile: this list may predate it
            for gone in set(self._applied) - set(records):
                self._apply(gone, None)
            for found, record in records.items():
                self._apply(found, record)
            return
        found_now = await self._store.get(name)
        self._generation += 1
        self._apply(name, found_now)

    async def sync_forever(self, interval_s: float) -> None:
        """Re-read every server every ``interval_s``: a bound on staleness should a control
        message be lost (the channel re-reads everything after a gap of its own)."""
        while True:
            try:
                await self.sync()
            except BrokerError as err:
                log.warning("run-time MCP servers not re-read this round: %s", err.reason)
            await asyncio.sleep(interval_s)

    def _apply(self, name: str, record: McpServerRecord | None) -> None:
        if name in self._configured:
            if record is not None:
                log.warning("run-time MCP server %s ignored: [mcp.servers.%s] declares it",
                            name, name)
            return
        if record is None:
            self._applied.pop(name, None)
            self.registry.discard(name)
            return
        if self._applied.get(name) == record:
            return
        self._applied[name] = record
        server = self._server(record)
        if server is None:
            self.registry.discard(name)
            return
        try:
            self.registry.register(server, replace=True)
        except BrokerError as err:  # the egress rules of this replica refuse it
            log.error("MCP server %s not served here: %s", name, err.message)  # noqa: TRY400
            self.registry.discard(name)

    def _server(self, record: McpServerRecord) -> McpServer | None:
        secret = ""
        if record.credential_env:
            secret = self._environ.get(record.credential_env, "")
        elif record.credential_sealed:
            secret = self._held.open(record.name, record.credential_sealed) or ""
        if record.credential_kind != "none" and not secret:
            log.error(
                "MCP server %s not served here: its credential cannot be read (%s)", record.name,
                f"${record.credential_env} is not set" if record.credential_env
                else "sealed under another key: rotate it")
            return None
        return McpServer(
            record.name, record.url, record.description,
            auth_headers(record.credential_kind, record.credential_header, secret),
            record.aggregate, record.timeout_s, record.idle_timeout_s, "api", record.epoch)

    # --- Internals ------------------------------------------------------------------------------

    async def _changed(self, name: str, record: McpServerRecord | None) -> None:
        self._generation += 1
        self._apply(name, record)  # this process at once, before the answer
        await self.notify(name)

    async def _replace(self, record: McpServerRecord) -> McpServerRecord:
        if not await self._store.update(record):
            raise McpServerNotFoundError(metadata={"server": record.name})
        await self._changed(record.name, record)
        log.info("MCP server %s changed", record.name)
        return record

    async def _stored(self, name: str) -> McpServerRecord:
        self._refuse_configured(name)
        record = await self._store.get(name)
        if record is None:
            raise McpServerNotFoundError(metadata={"server": name[:64]})
        return record

    def _refuse_configured(self, name: str) -> None:
        if name in self._configured:
            raise McpServerInvalidError(
                f"The MCP server {name!r} is declared in the configuration"
                f" ([mcp.servers.{name}]): change or remove it there and restart the replicas.",
                metadata={"server": name, "source": "config"})

    async def _check_url(self, name: str, url: str) -> None:
        if len(url) > _MAX_URL or not url.startswith(("http://", "https://")):
            raise McpServerInvalidError(
                f"The MCP server's url must be an absolute http(s) URL of at most {_MAX_URL}"
                " characters (its Streamable HTTP endpoint, e.g. https://host/mcp).",
                metadata={"server": name})
        try:
            await check_registered_url(self._egress, url)
        except BrokerError as refused:
            refused.metadata.setdefault("server", name)
            raise

    def _configured_record(self, name: str) -> McpServerRecord:
        settings = self._configured[name]
        cred = settings.credential
        secret = (self._environ.get(cred.env, "") if cred.env else cred.value)
        return McpServerRecord(
            name=name, url=settings.url, epoch="", description=settings.description,
            aggregate=settings.aggregate, timeout_s=settings.timeout_s,
            idle_timeout_s=settings.idle_timeout_s, credential_kind=cred.kind,
            credential_header=cred.header.lower() if cred.kind == "header" else "",
            credential_env=cred.env,
            credential_fingerprint=fingerprint(secret) if secret and cred.kind != "none" else "")

    def _stamp(self, current: McpServerRecord) -> float:
        return max(self._clock(), current.updated_at + 0.001)


def _check_description(text: str) -> None:
    if len(text) > _MAX_DESCRIPTION:
        raise McpServerInvalidError(
            f"The description is at most {_MAX_DESCRIPTION} characters.")


def _new_epoch() -> str:
    return secrets.token_hex(6)
