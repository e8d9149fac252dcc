"""``benchmarks.budget_cpu`` on the session's redis-server, briefly: a calls budget adds two
scripts to a hop (its reserve and its settle), and one when calls are reserved ahead, because
a call's settle and the next call's reserve are then one script (decision 0110)."""

from __future__ import annotations

from benchmarks.budget_cpu import measure


async def test_a_budget_reserved_ahead_adds_one_script_to_a_hop(
    redis_url: str, redis_key_prefix: str
) -> None:
    none, plain, ahead = [
        await measure(redis_url, variant, 1, 60, 2, prefix=redis_key_prefix)
        for variant in ("none", "plain", "ahead")
    ]
    assert abs(plain.scripts - (none.scripts + 2)) < 0.1
    assert abs(ahead.scripts - (none.scripts + 1)) < 0.1
    assert min(none.cpu_us, none.wall_us, ahead.cpu_us) > 0
