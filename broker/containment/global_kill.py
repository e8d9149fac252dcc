"""The global kill switch: one operator action that stops every new hop on every replica.

Engaged (``a2a-broker kill --all``, ``POST /admin/kill``), every replica refuses every mediated
A2A request and LLM call with ``KILL_SWITCH_ENGAGED`` (CancelTask excepted: stopping work is
what an operator wants then), and open streams end at their next recheck (about a second).
Lifted (``a2a-broker kill --undo``, ``DELETE /admin/kill``), traffic flows again.

The store holds the truth. Each replica keeps a copy in memory that the hot path reads at no
cost: it is updated at once when the control channel says the switch moved, and re-read every
``POLL_S`` in case a message was lost. A replica that cannot read the store keeps its last
known state (and every request then fails on the store anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from broker.background import BackgroundTasks
from broker.errors import KillSwitchEngagedError, StoreUnavailableError
from broker.stores.kill_switch import KillSwitchState, KillSwitchStore

log = logging.getLogger("a2a_broker.killswitch")
POLL_S = 1.0
Publish = Callable[[], Awaitable[None]]


class GlobalKillSwitch:
    """This replica's view of the switch; ``check`` raises while it is engaged."""

    def __init__(
        self, store: KillSwitchStore, publish: Publish, tasks: BackgroundTasks | None = None
    ) -> None:
        self._store = store
        self._publish = publish
        self.state: KillSwitchState | None = None
        self._poll: asyncio.Task[None] | None = None
        self._tasks = tasks if tasks is not None else BackgroundTasks()

    async def start(self) -> None:
        await self.refresh()
        self._poll = self._tasks.spawn(self._poll_forever(), "kill-switch-poll")

    async def stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll

    def check(self) -> None:
        """Raise ``KillSwitchEngagedError`` while the switch is engaged (no I/O)."""
        if self.state is not None:
            raise KillSwitchEngagedError(metadata={"engaged_by": self.state.by})

    async def engage(self, by: str, reason: str) -> tuple[KillSwitchState, bool]:
        """Engage it (an earlier engagement stays in force): the state, and whether this call
        engaged it. Raises ``StoreUnavailableError``."""
        state, newly = await self._store.engage(
            KillSwitchState(engaged_at=time.time(), by=by, reason=reason)
        )
        self._set(state)
        await self._publish()
        return state, newly

    async def lift(self) -> bool:
        """Lift it; True if it was engaged. Raises ``StoreUnavailableError``."""
        was = await self._store.lift()
        self._set(None)
        await self._publish()
        return was

    async def refresh(self) -> None:
        """Re-read the store (a message said it moved, or the poll is due)."""
        try:
            self._set(await self._store.state())
        except StoreUnavailableError as err:
            log.warning("kill switch state not re-read: %s", err.detail)

    def _set(self, state: KillSwitchState | None) -> None:
        if (state is None) != (self.state is None):
            if state is None:
                log.warning("global kill switch lifted: traffic flows again")
            else:
                log.warning("global kill switch ENGAGED by %s (%s): every new hop is refused",
                            state.by, state.reason or "no reason given")  # fmt: skip
        self.state = state

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            await self.refresh()


class _Operation(Protocol):
    @property
    def name(self) -> str: ...


class RefuseWhileKilled:
    """A stage for both pipelines (A2A and LLM): refuse every call while the switch is
    engaged, except an A2A CancelTask."""

    def __init__(self, switch: GlobalKillSwitch) -> None:
        self._switch = switch

    async def __call__(self, ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        if self._switch.state is not None and not _cancels(ctx):
            self._switch.check()
        return await call_next(ctx)


def _cancels(ctx: Any) -> bool:
    operation: _Operation | None = getattr(ctx, "operation", None)
    return operation is not None and operation.name == "CancelTask"
