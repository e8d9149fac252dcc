"""MCP servers registered at run time (the admin API), shared by every worker and replica.

Servers declared in ``[mcp.servers]`` are configuration and never stored here. A record holds
what every replica needs to call the server: its URL, options and the credential the broker
presents to it, which is never kept in plain text: either the name of an environment variable
every replica reads (as ``[upstream_credentials]`` and ``[mcp.servers]`` do) or the secret
sealed (AES-GCM) under a key every replica derives (``broker.mcp.directory``). Each replica
keeps its own table of servers for the hot path, told of every change over the control channel
(``broker/runtime/control.py``), as agent changes are.

Redis: one hash, ``<prefix>:{mcp}:servers`` (name -> record JSON); an update is one script that
replaces a record only while it exists, so an update racing a removal never revives a server.
"""

from __future__ import annotations

import abc
import builtins
from typing import Literal

import msgspec
from redis.commands.core import AsyncScript

from broker.stores.redis_client import RedisClient, lua_source, unavailable_on_error

CredentialKind = Literal["none", "bearer", "header"]


class McpServerRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One run-time MCP server. ``epoch`` changes with its URL or credential: a session opened
    under another epoch no longer opens (decision 0070)."""

    name: str
    url: str
    epoch: str
    description: str = ""
    aggregate: bool = True
    timeout_s: float = 120.0
    idle_timeout_s: float = 60.0
    credential_kind: CredentialKind = "none"
    credential_header: str = ""  # kind "header": the header the secret travels in
    credential_env: str = ""  # the environment variable holding the secret, or
    credential_sealed: str = ""  # the secret, sealed to this server's name
    credential_fingerprint: str = ""  # "sha256:" + 8 hex of the secret's SHA-256
    created_at: float = 0.0
    updated_at: float = 0.0


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(McpServerRecord)
_UPDATE_LUA = lua_source("mcp_server_update.lua")


class McpServerStore(abc.ABC):
    """Contract (tests/contract/test_mcp_server_store.py, every backend). Redis failures raise
    ``StoreUnavailableError``."""

    @abc.abstractmethod
    async def create(self, record: McpServerRecord) -> bool:
        """Store ``record`` unless its name is taken; False (nothing changed) if it is."""

    @abc.abstractmethod
    async def update(self, record: McpServerRecord) -> bool:
        """Replace the record of ``record.name`` atomically if there is one; False if not."""

    @abc.abstractmethod
    async def get(self, name: str) -> McpServerRecord | None:
        """The server named ``name``, or None."""

    @abc.abstractmethod
    async def list(self) -> builtins.list[McpServerRecord]:
        """Every stored server, sorted by name."""

    @abc.abstractmethod
    async def delete(self, name: str) -> bool:
        """Remove the server; True if it existed."""


class MemoryMcpServerStore(McpServerStore):
    def __init__(self) -> None:
        self._records: dict[str, McpServerRecord] = {}

    async def create(self, record: McpServerRecord) -> bool:
        if record.name in self._records:
            return False
        self._records[record.name] = record
        return True

    async def update(self, record: McpServerRecord) -> bool:
        if record.name not in self._records:
            return False
        self._records[record.name] = record
        return True

    async def get(self, name: str) -> McpServerRecord | None:
        return self._records.get(name)

    async def list(self) -> builtins.list[McpServerRecord]:
        return sorted(self._records.values(), key=lambda record: record.name)

    async def delete(self, name: str) -> bool:
        return self._records.pop(name, None) is not None


class RedisMcpServerStore(McpServerStore):
    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self._key = f"{prefix}:{{mcp}}:servers"
        self._update: AsyncScript = client.register_script(_UPDATE_LUA)

    @unavailable_on_error
    async def create(self, record: McpServerRecord) -> bool:
        return bool(await self._client.hsetnx(self._key, record.name, _ENCODER.encode(record)))

    @unavailable_on_error
    async def update(self, record: McpServerRecord) -> bool:
        done = await self._update(keys=[self._key], args=[record.name, _ENCODER.encode(record)])
        return bool(done)

    @unavailable_on_error
    async def get(self, name: str) -> McpServerRecord | None:
        raw = await self._client.hget(self._key, name)
        return None if raw is None else _DECODER.decode(raw)

    @unavailable_on_error
    async def list(self) -> builtins.list[McpServerRecord]:
        records = [_DECODER.decode(raw) for raw in await self._client.hvals(self._key)]
        return sorted(records, key=lambda record: record.name)

    @unavailable_on_error
    async def delete(self, name: str) -> bool:
        return bool(await self._client.hdel(self._key, name))
