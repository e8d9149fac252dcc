"""A circuit breaker driven through random histories keeps its promises.

Random calls (admitted, then ending in success, failure or nothing), in random interleavings,
with the clock moving by random steps. After every step:

- never more probes are out than ``half_open_probes``;
- an open breaker refuses every call until ``open_s`` has passed since it opened;
- it goes from open to closed only through a successful probe;
- it opens only when the calls it counted within the window hold enough failures.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker.containment.breaker import CircuitBreaker, CircuitOpenError, State
from broker.settings_containment import BreakerSettings

SETTINGS = BreakerSettings(
    failures=3, failure_ratio=0.5, window_s=10.0, open_s=5.0, half_open_probes=2
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class BreakerHistory(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.breaker = CircuitBreaker("agent", SETTINGS, self.clock)
        self.out: list[int] = []  # tickets of admitted calls not ended yet
        self.opened_at: float | None = None
        self.closed_counts: list[tuple[float, bool]] = []  # (time, failed) counted while closed

    @rule(step=st.floats(0, 7, allow_nan=False))
    def time_passes(self, step: float) -> None:
        self.clock.now += step

    @rule()
    def a_call_starts(self) -> None:
        before = self.breaker.state
        try:
            ticket = self.breaker.admit()
        except CircuitOpenError as refused:
            assert before is not State.CLOSED
            assert refused.retry_after_s > 0
            return
        if before is State.OPEN:
            assert self.opened_at is not None
            assert self.clock.now >= self.opened_at + SETTINGS.open_s
        self.out.append(ticket)

    @precondition(lambda self: self.out)
    @rule(index=st.integers(0, 100), outcome=st.sampled_from([True, False, None]))
    def a_call_ends(self, index: int, outcome: bool | None) -> None:
        ticket = self.out.pop(index % len(self.out))
        probe = ticket > 0
        before = self.breaker.state
        if before is State.CLOSED and not probe and outcome is not None:
            self.closed_counts.append((self.clock.now, not outcome))
        self.breaker.record(outcome, ticket=ticket)
        after = self.breaker.state
        if before is not State.CLOSED and after is State.CLOSED:
            assert probe and outcome is True, "closed without a successful probe"
            self.closed_counts = []
        if before is not State.OPEN and after is State.OPEN:
            self.opened_at = self.clock.now
            self._check_it_had_cause(probe, outcome)

    def _check_it_had_cause(self, probe: bool, outcome: bool | None) -> None:
        if probe:
            assert outcome is False
            return
        # Bucketed windows may keep a call up to one bucket longer than window_s.
        horizon = self.clock.now - SETTINGS.window_s - SETTINGS.window_s / 10
        recent = [failed for at, failed in self.closed_counts if at > horizon]
        assert sum(recent) >= SETTINGS.failures

    @invariant()
    def probes_are_bounded(self) -> None:
        newest = max(self.out, default=0)
        assert newest == 0 or self.out.count(newest) <= SETTINGS.half_open_probes


TestBreakerHistory = BreakerHistory.TestCase
TestBreakerHistory.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
