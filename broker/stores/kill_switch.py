"""Where the global kill switch is kept: engaged (by whom, when, why) or not, for every replica.

The store holds the truth; each replica keeps a copy in memory, updated over the control
channel at once and re-read about once a second (``broker/containment/global_kill.py``), so the
hot path never asks the store. Redis: one key, ``<prefix>:killswitch``, holding the state as JSON.
"""

from __future__ import annotations

import abc

import msgspec

from broker.stores.redis_client import RedisClient, unavailable_on_error


class KillSwitchState(msgspec.Struct, frozen=True, kw_only=True):
    """An engaged kill switch: when (epoch seconds), by whom, and the operator's reason."""

    engaged_at: float
    by: str
    reason: str = ""


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(KillSwitchState)


class KillSwitchStore(abc.ABC):
    """Contract (tests/contract/test_kill_switch.py, every backend): ``engage`` keeps an
    earlier engagement (its time, author and reason) and returns the state in force; ``lift``
    says whether it was engaged; ``state`` is None while lifted. Redis failures raise
    ``StoreUnavailableError``."""

    @abc.abstractmethod
    async def engage(self, state: KillSwitchState) -> tuple[KillSwitchState, bool]:
        """Engage unless engaged already: the state in force, and True if this call engaged it."""

    @abc.abstractmethod
    async def lift(self) -> bool:
        """Lift the switch; True if it was engaged."""

    @abc.abstractmethod
    async def state(self) -> KillSwitchState | None:
        """The engaged state, or None."""


class MemoryKillSwitchStore(KillSwitchStore):
    def __init__(self) -> None:
        self._state: KillSwitchState | None = None

    async def engage(self, state: KillSwitchState) -> tuple[KillSwitchState, bool]:
        if self._state is not None:
            return self._state, False
        self._state = state
        return state, True

    async def lift(self) -> bool:
        engaged, self._state = self._state is not None, None
        return engaged

    async def state(self) -> KillSwitchState | None:
        return self._state


class RedisKillSwitchStore(KillSwitchStore):
    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self._key = f"{prefix}:killswitch"

    @unavailable_on_error
    async def engage(self, state: KillSwitchState) -> tuple[KillSwitchState, bool]:
        # SET NX then GET: one engagement wins; a racing second one reads the winner's state.
        if await self._client.set(self._key, _ENCODER.encode(state), nx=True):
            return state, True
        current = await self.state()
        if current is None:  # lifted in between: engage again
            return await self.engage(state)
        return current, False

    @unavailable_on_error
    async def lift(self) -> bool:
        return bool(await self._client.delete(self._key))

    @unavailable_on_error
    async def state(self) -> KillSwitchState | None:
        raw = await self._client.get(self._key)
        if raw is None:
            return None
        try:
            return _DECODER.decode(raw)
        except msgspec.DecodeError:  # written by hand? still engaged: fail closed
            return KillSwitchState(engaged_at=0.0, by="unknown", reason="unreadable state")
