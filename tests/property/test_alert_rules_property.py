"""Properties of the alert state's arithmetic (the memory backend, which the Redis scripts
mirror; the contract suite checks both agree on the cases that matter)."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.stores.alert_base import EdgeRules
from broker.stores.memory_alerts import MemoryAlertState

RULES = EdgeRules(bucket_s=10, smoothing=0.3, rate_factor=2.0, rate_min_calls=3,
                  rate_warmup_buckets=1, depth_warmup_calls=2, ttl_s=10_000)  # fmt: skip

# (seconds to wait before, calls, depth) per observation of one edge.
observations = st.lists(
    st.tuples(st.integers(0, 25), st.integers(1, 6), st.integers(1, 5)), min_size=1, max_size=40
)


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=200, deadline=None)
@given(observations)
def test_first_once_rate_once_per_bucket_deeper_only_beyond_the_usual(
    steps: list[tuple[int, int, int]],
) -> None:
    clock = Clock()
    state = MemoryAlertState(clock)
    firsts, rate_buckets, deepest = 0, [], 0
    for number, (wait, calls, depth) in enumerate(steps):
        clock.now += wait
        found = asyncio.run(state.observe_edge("a>b", calls, depth, RULES))
        firsts += found.first
        if found.rate:
            rate_buckets.append(int(clock.now // RULES.bucket_s))
            assert found.rate >= RULES.rate_min_calls
            assert found.rate > RULES.rate_factor * found.baseline
        if found.deeper:
            assert number > 0 and found.deeper == depth > found.usual == deepest
        assert found.usual == deepest  # the deepest chain seen before this observation
        deepest = max(deepest, depth)
    assert firsts == 1
    assert len(rate_buckets) == len(set(rate_buckets))  # at most one rate alert per bucket
