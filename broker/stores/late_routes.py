"""Task routes recorded even when the store is down at the moment the agent answers.

A route is claimed after the agent has created the task, so a store failure at that moment must
not turn the agent's answer into a retryable error (the caller would repeat a side effect that
already happened). ``LateTaskRoutes`` wraps the shared route store: a claim the store cannot take
now is accepted and retried in the background until it lands (``LateWrites``), and this process
remembers it meanwhile, so a task-scoped call for that task through this replica lands the claim
first (read your own writes). Other replicas see the route once the retry has landed, within
about ``late_writes.RETRY_INTERVAL_S`` of the store coming back.

A claim that lands late is checked like any other: if another caller owns that task id at that
agent by then, the route is left to its owner, the late claimant never gets it (its task-scoped
calls answer TASK_NOT_FOUND), and ``on_conflict`` reports it. Concurrent pending claims of one
task land in the order they were made, so the first claimant wins as it would have with the
store up. docs/decisions/0020 says why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from broker.errors import StoreUnavailableError
from broker.late_writes import LateWrites
from broker.stores.base import TaskRoute, TaskRouteStore

log = logging.getLogger("a2a_broker.routes")

ConflictReport = Callable[[TaskRoute], Awaitable[None]]


@dataclass(slots=True, eq=False)
class _Claim:
    route: TaskRoute
    tree: str | None
    expires_at: float  # when the route would expire had it been written on time
    finished: bool = False


class LateTaskRoutes(TaskRouteStore):
    """``inner`` with claims that survive a store outage. Same contract as ``TaskRouteStore``,
    except that ``claim`` answers True for a claim it had to defer (its conflict, if any, is
    reported to ``on_conflict`` when it lands) instead of raising StoreUnavailableError."""

    def __init__(
        self,
        inner: TaskRouteStore,
        late: LateWrites,
        on_conflict: ConflictReport,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inner = inner
        self._late = late
        self._on_conflict = on_conflict
        self._clock = clock
        self._pending: dict[tuple[str, str], list[_Claim]] = {}

    async def claim(
        self, route: TaskRoute, ttl_s: int, tree: str | None = None, *, finished: bool = False
    ) -> bool:
        try:
            return await self._inner.claim(route, ttl_s, tree, finished=finished)
        except StoreUnavailableError as err:
            self._defer(_Claim(route, tree, self._clock() + ttl_s, finished), err)
            return True

    async def get(self, agent: str, task_id: str) -> TaskRoute | None:
        if self._pending:
            claims = self._pending.get((agent, task_id))
            if claims:
                await self._land(claims[-1])  # StoreUnavailableError while the store is down
        return await self._inner.get(agent, task_id)

    @property
    def pending(self) -> int:
        """Claims accepted and not yet written."""
        return sum(len(claims) for claims in self._pending.values())

    def _defer(self, claim: _Claim, err: StoreUnavailableError) -> None:
        route = claim.route
        key = (route.agent, route.task_id)
        self._pending.setdefault(key, []).append(claim)
        what = f"route of task {route.task_id} at {route.agent} for {route.owner}"
        log.warning("%s not recorded yet (%s); retried until the store answers", what, err.detail)

        async def attempt() -> None:
            await self._land(claim)

        self._late.add(
            attempt, until=claim.expires_at, what=what, given_up=lambda: self._forget(claim)
        )

    async def _land(self, claim: _Claim) -> None:
        """Write the pending claims of ``claim``'s task up to ``claim``, oldest first (so the
        first claimant wins, as it would have with the store up); raises StoreUnavailableError."""
        claims = self._pending.get((claim.route.agent, claim.route.task_id), [])
        if claim not in claims:
            return  # written already
        for earlier in claims[: claims.index(claim) + 1]:
            await self._write(earlier)

    async def _write(self, claim: _Claim) -> None:
        if claim not in self._pending.get((claim.route.agent, claim.route.task_id), ()):
            return  # a concurrent attempt wrote it
        ttl_s = max(1, int(claim.expires_at - self._clock()))
        claimed = await self._inner.claim(claim.route, ttl_s, claim.tree, finished=claim.finished)
        if self._forget(claim) and not claimed:  # only the attempt that wrote it reports it
            await self._on_conflict(claim.route)

    def _forget(self, claim: _Claim) -> bool:
        key = (claim.route.agent, claim.route.task_id)
        claims = self._pending.get(key, [])
        if claim not in claims:
            return False
        claims.remove(claim)
        if not claims:
            del self._pending[key]
        return True
