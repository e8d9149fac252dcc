"""Guards against cascades: hop depth, fan-out per parent task, size of the whole task tree.

Counted in the store (one atomic script on Redis), so the limits hold across every replica and
are never passed under concurrency. Only sends create children; reads of existing tasks do not.
An in-flight child is released once the agent's answer is read (a stream: when it ends), or
when the call is refused further in; a release the store fails is retried in the background
until it lands (``LateWrites``), and a broker that dies mid-request leaks its slot only until
the slot expires. A presented token's revocation check, left here by the delegation stage, is
made in the slot's own script; where the pipeline lets it, the slot is taken while the stages
up to the budget run, so the reserve shares its round trip (decision 0075).
"""

from __future__ import annotations

import asyncio
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
from broker.pipeline.stage import holding, started
from broker.settings import DelegationSettings, GuardLimits, LimitSettings
from broker.stages.delegation import raise_revoked
from broker.stores.base import ChildSlot, DelegationCounters, Refusal, Revocations, Revoked
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
        *,
        revocations: Revocations | None = None,
        ahead: bool = False,
    ) -> None:
        self._counters = counters
        # Where the delegation stage leaves a presented token's revocation check to the guards.
        self._revocations = revocations
        # Let the stages after the guards run while the slot is taken (the pipeline sets it
        # where every one of them can only refuse, and the budget stage confirms the slot).
        self._ahead = ahead
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
        taking = self._take(ctx, limits)
        try:
            if not self._ahead:
                slot = _Slot(self, ctx, _done(_refused(ctx, await taking)))
                ctx.on_answer = slot.answered
                return await holding(ctx, call_next, slot, "fan-out slot", tasks=self._tasks)
            # The stages after this one run while the slot is being taken, so the budget's
            # reserve shares its round trip; they hear its refusal first (decision 0075).
            pending = _Slot(self, ctx, started(taking))
            ctx.pending_checks, ctx.on_answer = pending.confirm, pending.answered
            try:
                outcome = await holding(ctx, call_next, pending, "fan-out slot", tasks=self._tasks)
            except BrokerError:
                await pending.confirm()  # the slot's refusal, if there is one, comes first
                raise
            await pending.confirm()  # answered without forwarding: still, a refusal comes first
            return outcome
        finally:
            # The slot and the context hold each other (its hooks on the context, the context
            # in it): unhooked once the stages after this one are done with them, the call's
            # state is freed as soon as it ends instead of being left to the cyclic GC.
            ctx.pending_checks = ctx.on_answer = None

    async def _take(self, ctx: MediationContext, limits: GuardLimits) -> Taken:
        """Take the slot (the token's revocation check in the same round trip if it is due)."""
        assert ctx.parent is not None  # noqa: S101
        bounds = {
            "max_concurrent": limits.max_children_concurrent,
            "max_total": limits.max_children_total,
            "max_tree": limits.max_tree_size,
            "slot_ttl_s": self._slot_ttl_s,
            "ttl_s": self._ttl_s,
        }
        parent, tree = ctx.parent.jti, ctx.parent.tree
        if not ctx.revocation_unchecked:
            return await self._counters.acquire_child(parent, tree, **bounds)
        assert self._revocations is not None  # noqa: S101 - the pipeline passes them
        return await self._counters.acquire_unrevoked(self._revocations, parent, tree, **bounds)

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


Taken = ChildSlot | Refusal | Revoked


def _refused(ctx: MediationContext, taken: Taken) -> ChildSlot:
    """The slot taken, or the refusal raised: a revoked token's or a killed tree's first.

    A refused hop has no token (one minted while the slot was being taken is forgotten), so
    its record and log line are those of a refusal by the guards before the token was minted.
    """
    if not isinstance(taken, ChildSlot):
        ctx.hop, ctx.hop_token = None, ""
    if isinstance(taken, str):
        raise_revoked(ctx, taken)
    ctx.revocation_unchecked = False
    if isinstance(taken, Refusal):
        tree = ctx.parent.tree if ctx.parent is not None else ""
        raise _REFUSALS[taken.limit](metadata={"tree": tree})
    return taken


def _done(slot: ChildSlot) -> asyncio.Future[Taken]:
    taken: asyncio.Future[Taken] = asyncio.get_running_loop().create_future()
    taken.set_result(slot)
    return taken


class _Slot:
    """A child slot (``taking``: being taken, or taken), released once the call ends, however
    it ends, if it was taken: when the agent's answer is in (``answered``, so the release
    goes out with the task route's claim, in its round trip), else when the call ends.
    ``confirm`` raises the slot's refusal (each time it is called); where the slot is taken
    while later stages run, it is awaited before anything leaves (the budget stage does)."""

    def __init__(
        self, guards: CascadeGuards, ctx: MediationContext, taking: asyncio.Future[Taken]
    ) -> None:
        self._guards = guards
        self._ctx = ctx
        self._taking = taking
        self._releasing: asyncio.Future[None] | None = None
        self._refusal: BrokerError | None = None

    async def confirm(self) -> None:
        if self._refusal is not None:  # the same refusal each time: the context is reset
            raise self._refusal
        try:
            _refused(self._ctx, await self._taking)
        except BrokerError as refusal:
            self._refusal = refusal
            raise

    def answered(self) -> None:
        """The agent has answered (a unary call): the child is no longer in flight."""
        if self._releasing is None and (slot := self._slot()) is not None:
            self._releasing = started(self._guards._release(slot))

    async def give_back(self) -> None:
        if self._releasing is None:
            await asyncio.wait([self._taking])  # its failure is confirm's to raise
            if (slot := self._slot()) is None:
                return  # nothing known to be taken (a slot whose reply was lost expires)
            self._releasing = started(self._guards._release(slot))
        await self._releasing

    async def settle(self) -> None:
        await self.give_back()

    def _slot(self) -> ChildSlot | None:
        taking = self._taking
        if not taking.done() or taking.cancelled() or taking.exception() is not None:
            return None
        taken = taking.result()
        return taken if isinstance(taken, ChildSlot) else None
