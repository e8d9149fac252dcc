"""Circuit breakers: stop calling an upstream that keeps failing, and find out when it is back.

A breaker is **closed** while calls succeed. It counts calls and failures in a sliding window
(ten buckets of ``window_s / 10``); when, within the window, at least ``failures`` calls failed
and they were at least ``failure_ratio`` of the calls, it **opens**: every call is refused at
once for ``open_s`` (the refusal says how long is left). Then it is **half-open**: up to
``half_open_probes`` calls at a time go through; the first success closes it (the window starts
afresh), a failure opens it again for ``open_s``. A call whose outcome says nothing about the
upstream (refused by a later stage, cancelled by its caller) is "neutral": it counts for
nothing and frees its probe.

Closed, a call costs two attribute reads before and a few integer updates after: no lock, no
store round trip. The state lives in this process (docs/decisions/0021). Calls admitted before
the circuit opened and finishing after are not counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum

from broker.observability.probes import breaker_changed
from broker.settings_containment import BreakerSettings

log = logging.getLogger("a2a_broker.breaker")
_BUCKETS = 10


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(Exception):
    """The breaker refuses the call; ``retry_after_s`` until it may let one through."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(retry_after_s)
        self.retry_after_s = retry_after_s


class CircuitBreaker:
    """One upstream's breaker. ``admit`` before the call, ``record`` after (always, once)."""

    def __init__(
        self, name: str, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self._settings = settings
        self._clock = clock
        self.state = State.CLOSED
        self._open_until = 0.0
        self._probes = 0  # probes out in the current half-open round
        self._round = 0  # half-open rounds so far: a probe of an earlier round is stale
        self._width = settings.window_s / _BUCKETS
        self._slots = [-1] * _BUCKETS  # the time slot each bucket counts, -1: none yet
        self._calls = [0] * _BUCKETS
        self._failures = [0] * _BUCKETS

    def admit(self) -> int:
        """Let a call through, or raise CircuitOpenError. The ticket to give ``record``: 0 for a
        counted call, else the half-open round it probes in."""
        if self.state is State.CLOSED:
            return 0
        now = self._clock()
        if self.state is State.OPEN:
            if now < self._open_until:
                raise CircuitOpenError(self._open_until - now)
            self.state, self._probes, self._round = State.HALF_OPEN, 0, self._round + 1
            breaker_changed(self.name, self.state.value)
            log.info("circuit of %s half-open: probing", self.name)
        if self._probes >= self._settings.half_open_probes:
            raise CircuitOpenError(min(1.0, self._settings.open_s))  # a probe is under way
        self._probes += 1
        return self._round

    def record(self, success: bool | None, *, ticket: int) -> None:
        """The outcome of an admitted call: True ok, False failed, None says nothing."""
        if ticket:
            if self.state is State.HALF_OPEN and ticket == self._round:
                self._probed(success)
        elif self.state is State.CLOSED and success is not None:
            self._count(success)

    def _probed(self, success: bool | None) -> None:
        if success is None:
            self._probes -= 1
        elif success:
            self.state = State.CLOSED
            breaker_changed(self.name, self.state.value)
            self._slots = [-1] * _BUCKETS
            log.warning("circuit of %s closed: the upstream answers again", self.name)
        else:
            self._open("a probe failed")

    def _count(self, success: bool) -> None:
        slot = int(self._clock() / self._width)
        i = slot % _BUCKETS
        if self._slots[i] != slot:
            self._slots[i], self._calls[i], self._failures[i] = slot, 0, 0
        self._calls[i] += 1
        if success:
            return
        self._failures[i] += 1
        calls, failures = self._in_window(slot)
        if failures >= self._settings.failures and failures >= calls * self._settings.failure_ratio:
            self._open(f"{failures} of {calls} calls failed within {self._settings.window_s} s")

    def _in_window(self, slot: int) -> tuple[int, int]:
        live = [i for i in range(_BUCKETS) if slot - _BUCKETS < self._slots[i] <= slot]
        return sum(self._calls[i] for i in live), sum(self._failures[i] for i in live)

    def _open(self, why: str) -> None:
        self.state = State.OPEN
        breaker_changed(self.name, self.state.value)
        self._open_until = self._clock() + self._settings.open_s
        log.warning("circuit of %s open for %s s: %s", self.name, self._settings.open_s, why)


class Breakers:
    """One breaker per upstream name, made on first use (names are registered agents or
    configured providers, so this holds as many as there are upstreams)."""

    def __init__(
        self, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._by_name: dict[str, CircuitBreaker] = {}

    def __getitem__(self, name: str) -> CircuitBreaker:
        breaker = self._by_name.get(name)
        if breaker is None:
            breaker = self._by_name[name] = CircuitBreaker(name, self.settings, self._clock)
        return breaker
