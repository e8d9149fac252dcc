"""A budget ledger that counts what reached the real one behind it: for tests of what a wrapper
(``broker.budgets.ahead.ReservingAhead``) asks of the store."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from broker.budgets.model import Scope, Usage
from broker.stores.budget_base import BudgetLedger, BudgetRefusal, BudgetStatus, Reservation


class CountingLedger(BudgetLedger):
    """``inner``, with its reserves and rolls counted."""

    def __init__(self, inner: BudgetLedger) -> None:
        self.inner = inner
        self.reserves = 0
        self.rolls = 0

    async def reserve(
        self, scopes: Sequence[Scope], amounts: Usage, *, ttl_s: float
    ) -> Reservation | BudgetRefusal:
        self.reserves += 1
        return await self.inner.reserve(scopes, amounts, ttl_s=ttl_s)

    def roll_soon(
        self, ended: Reservation, scopes: Sequence[Scope], amounts: Usage, *, ttl_s: float,
        settled: Callable[[BaseException | None], None],
        reserved: Callable[[Reservation | BudgetRefusal | BaseException], None],
    ) -> bool:  # fmt: skip
        self.rolls += 1
        return self.inner.roll_soon(
            ended, scopes, amounts, ttl_s=ttl_s, settled=settled, reserved=reserved
        )

    async def settle(self, reservation: Reservation, actual: Usage) -> None:
        await self.inner.settle(reservation, actual)

    async def release(self, reservation: Reservation) -> None:
        await self.inner.release(reservation)

    async def expire(self) -> int:
        return await self.inner.expire()

    async def status(self, scopes: Sequence[Scope]) -> list[BudgetStatus]:
        return await self.inner.status(scopes)
