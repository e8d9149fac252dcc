"""Operator controls that must hold on every replica at once, over one Redis pub/sub channel.

``<key_prefix>:control`` (a ``ReplicaChannel``, the mechanism the policy reload uses) carries:

- ``{"kind": "agent", "name": N}``: agent N was written (suspended, resumed, updated, deleted):
  every replica drops N from its read cache, so its next request reads the store;
- ``{"kind": "credentials"}``: a credential was rotated or revoked: drop every cached lookup;
- ``{"kind": "kill"}``: the global kill switch was engaged or lifted: re-read its state;
- ``{"kind": "mcp", "name": N}``: the run-time MCP server N was registered, changed or removed:
  every replica re-reads it from the store into its table (``broker.mcp.directory``).

A replica whose subscription was down forgets its whole cache, re-reads the kill switch and every
run-time MCP server once the subscription is back (it may have missed messages). With the memory
store there is one process and nothing to tell: the writer's own effects are already in place.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import msgspec

from broker.background import BackgroundTasks
from broker.containment.global_kill import GlobalKillSwitch
from broker.settings import Settings
from broker.stores.base import Stores
from broker.stores.cache import CachedAgentRegistry, CachedCredentialStore, with_read_cache
from broker.stores.redis_client import RedisClient, open_redis
from broker.stores.replica_channel import ReplicaChannel

log = logging.getLogger("a2a_broker.control")
CONTROL_CHANNEL = "control"  # under [store] key_prefix


class ControlMessage(msgspec.Struct, frozen=True, kw_only=True):
    kind: Literal["agent", "credentials", "kill", "mcp"]
    name: str = ""


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(ControlMessage)


@dataclass(slots=True)
class Controls:
    """The stores as the pipeline reads them (cached where useful), the kill switch, and the
    channel that keeps both current on every replica."""

    stores: Stores
    kill: GlobalKillSwitch
    channel: ReplicaChannel | None
    redis: RedisClient | None
    # Re-reads one run-time MCP server ("": all of them) from the store (set by the runtime).
    mcp_changed: Callable[[str], Awaitable[None]] | None = None

    @classmethod
    async def start(
        cls, settings: Settings, stores: Stores, tasks: BackgroundTasks | None = None
    ) -> Controls:
        """Subscribe (redis store only), wrap the read cache, read the kill switch."""
        redis = channel = None
        controls = cls(stores, GlobalKillSwitch(stores.kill_switch, _no_publish, tasks), None, None)
        if settings.store.backend == "redis":
            redis = open_redis(settings.store)
            name = f"{settings.store.key_prefix}:{CONTROL_CHANNEL}"
            channel = ReplicaChannel(
                redis, name, controls.receive, on_gap=controls.caught_up, tasks=tasks
            )
            controls.channel, controls.redis = channel, redis
            controls.stores = with_read_cache(
                stores, settings.store.read_cache_ttl_s, notify=controls.publish_change
            )
            controls.kill = GlobalKillSwitch(stores.kill_switch, controls.publish_kill, tasks)
            await channel.start_when_possible()  # fail closed per request, not at start-up
        await controls.kill.start()
        return controls

    async def stop(self) -> None:
        await self.kill.stop()
        if self.channel is not None:
            await self.channel.stop()
        if self.redis is not None:
            await self.redis.aclose()

    async def publish_change(self, kind: Literal["agent", "credentials", "mcp"], name: str) -> None:
        await self._publish(ControlMessage(kind=kind, name=name))

    async def publish_kill(self) -> None:
        await self._publish(ControlMessage(kind="kill"))

    async def _publish(self, message: ControlMessage) -> None:
        if self.channel is not None and not await self.channel.publish(_ENCODER.encode(message)):
            # The change is in the store; the others see it within read_cache_ttl_s (and the
            # kill switch within a second) without the message.
            log.warning("control message %s not published: Redis unavailable", message.kind)

    async def receive(self, data: bytes) -> None:
        try:
            message = _DECODER.decode(data)
        except msgspec.DecodeError:
            log.warning("ignored a malformed control message")
            return
        if message.kind == "kill":
            await self.kill.refresh()
        elif message.kind == "mcp":
            await self._mcp_changed(message.name)
        elif message.kind == "agent" and isinstance(self.stores.registry, CachedAgentRegistry):
            self.stores.registry.forget(message.name)
        elif isinstance(self.stores.credentials, CachedCredentialStore):
            self.stores.credentials.forget()

    async def caught_up(self) -> None:
        """The subscription is back after a gap: forget what may have changed meanwhile."""
        if isinstance(self.stores.registry, CachedAgentRegistry):
            self.stores.registry.forget()
        if isinstance(self.stores.credentials, CachedCredentialStore):
            self.stores.credentials.forget()
        await self.kill.refresh()
        await self._mcp_changed("")

    async def _mcp_changed(self, name: str) -> None:
        if self.mcp_changed is not None:
            await self.mcp_changed(name)


async def _no_publish() -> None:
    return None
