"""Guards against cascades: hop depth, fan-out per parent task, size of the whole task tree.

Counted in the store (one atomic script on Redis), so the limits hold across every replica and
are never passed under concurrency. Only sends create children; reads of existing tasks do not.
An in-flight child is released when its answer (or stream) ends; a release the store fails is
retried in the background until it lands (``LateWrites``), and a broker that dies mid-request
leaks its slot only until the slot expires.
"""

from __future__ import annotations

import logging
import time

from broker.background import BackgroundTasks
from broker.errors import (
    BrokerError,
    FanOutConcurrentExceededError,
    FanOutTotalExceededError,
    HopLimitExceededError,
    StoreUnavailableError,
    TreeSizeExceededError,
)
from broker.late_writes import LateWrites
from broker.pipeline.stage import holding
from broker.settings import DelegationSettings, GuardLimits, LimitSettings
from broker.stores.base import ChildSlot, DelegationCounters, Refusal
from broker.types import CallNext, MediationContext, Outcome

log = logging.getLogger("a2a_broker.guards")

_REFUSALS: dict[str, type[BrokerError]] = {
    "concurrent": FanOutConcurrentExceededError,
    "total": FanOutTotalExceededError,
    "tree": TreeSizeExceededError,
}


class CascadeGuards:
    def __init__(
        self,
        counters: DelegationCounters,
        delegation: DelegationSettings,
        limits: LimitSettings,
        late: LateWrites | None = None,
        tasks: BackgroundTasks | None = None,
    ) -> None:
        self._counters = counters
        self._tasks = tasks
        self._late = late
        self._delegation = delegation
        # A slot outlives the longest exchange it can stand for, then frees itself.
        self._slot_ttl_s = int(max(limits.upstream_timeout_s, limits.sse_max_duration_s)) + 5
        self._ttl_s = max(self._slot_ttl_s, int(delegation.token_ttl_s) + 5)

    async def __call__(self, ctx: MediationContext, call_next: CallNext) -> Outcome:
        assert ctx.operation is not None and ctx.target is not None  # noqa: S101
        if not ctx.operation.sends_message:
            return await call_next(ctx)
        limits = check_depth(self._delegation, ctx.target.name, ctx.chain)
        if ctx.parent is None:
            return await call_next(ctx)  # a new tree: nothing to count against yet
        slot = await self._counters.acquire_child(
            ctx.parent.jti,
            ctx.parent.tree,
            max_concurrent=limits.max_children_concurrent,
            max_total=limits.max_children_total,
            max_tree=limits.max_tree_size,
            slot_ttl_s=self._slot_ttl_s,
            ttl_s=self._ttl_s,
        )
        if isinstance(slot, Refusal):
            raise _REFUSALS[slot.limit](metadata={"tree": ctx.parent.tree})
        return await holding(ctx, call_next, _Held(self, slot), "fan-out slot", tasks=self._tasks)

    async def _release(self, slot: ChildSlot) -> None:
        """Never let a failed release hide the request's own outcome: the slot expires anyway."""
        try:
            await self._counters.release_child(slot)
        except BrokerError as err:
            if isinstance(err, StoreUnavailableError) and self._late is not None:
                # Releasing twice is harmless (the second finds nothing in flight).
                self._late.add(
                    lambda: self._counters.release_child(slot),
                    until=time.time() + self._slot_ttl_s,
                    what=f"release of fan-out slot {slot.id}",
                )
                return
            log.warning("fan-out slot %s not released (%s); it expires by itself", slot.id, err)


def check_depth(
    delegation: DelegationSettings, target: str, chain: tuple[str, ...]
) -> GuardLimits:
    """Refuse a hop deeper than ``target``'s limit (every protocol's hops count the same:
    A→B is depth 1); the limits that apply to ``target``."""
    limits = delegation.limits_for(target)
    if limits.max_depth and len(chain) > limits.max_depth:
        raise HopLimitExceededError(metadata={"maxDepth": str(limits.max_depth)})
    return limits


class _Held:
    """A child slot: released once the call ends, however it ends."""

    def __init__(self, guards: CascadeGuards, slot: ChildSlot) -> None:
        self._guards = guards
        self._slot = slot

    async def give_back(self) -> None:
        await self._guards._release(self._slot)

    async def settle(self) -> None:
        await self._guards._release(self._slot)
