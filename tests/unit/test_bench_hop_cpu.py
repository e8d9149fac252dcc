"""``benchmarks.hop_cpu`` on the session's redis-server, briefly: a hop that presents a delegation
token makes as many Redis round trips as the first hop of a chain (decision 0075: its
revocation check, fan-out slot and budget reserve share one on the way in, and the slot's
release goes with the task route's claim, as the budget's settle does, decision 0078), with two
scripts more (the slot and its release).
"""

from __future__ import annotations

from benchmarks.hop_cpu import measure


async def test_a_token_presenting_hop_makes_no_more_round_trips_than_the_first(
    redis_url: str, redis_key_prefix: str
) -> None:
    prefix = redis_key_prefix
    _, origin_reads, origin_scripts = await measure(redis_url, "origin", 60, 1, 1, prefix=prefix)
    _, token_reads, token_scripts = await measure(redis_url, "token", 60, 1, 1, prefix=prefix)
    assert 1.8 <= origin_reads <= 2.2 and abs(origin_scripts - 3) < 0.1
    assert token_reads <= origin_reads + 0.1
    assert abs(token_scripts - (origin_scripts + 2)) < 0.1
