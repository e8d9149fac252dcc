"""``--repeat N``: the chosen scenarios measured in N alternated rounds, each point the median's.

Round 1 measures every chosen scenario in order, round 2 measures them again, and so on, so a
baseline's points and the broker's are taken close together in time in every round. Each point
(scenario, c) is then the point of the round whose throughput is the median of the N: a point
that was measured, so its columns (latency, CPU, Redis counters) all come from one measurement.
With an even N the lower of the two middle rounds is taken. Every round's throughput, CPU and
latency stay with the point (``rounds``), so the report can show the spread and pair ratios
round by round (decision 0095).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

# Scenarios measured in round 1 only, even with --repeat: each reports an aggregate of its own
# (h: 10,000 agents, minutes to start; k: the soak, a long run already), so a median of whole
# points would not be their reading. (p) is repeated: each round's record is one whole reading
# (a saturation search, the drive at 60% of it, the floor), and the round with the median p99
# is kept (decision 0108).
ONCE = frozenset({"h", "k"})
# What each round of a point keeps beside the chosen one: enough to pair ratios and
# differences round by round (throughput, CPU, added p50).
POINT_FIGURES = ("rps", "cpu_us_per_req", "p50_ms", "p99_ms")
PROBE_FIGURES = ("ttfe_p50_ms", "ttfe_p99_ms", "stream_p50_ms")
OPENLOOP_FIGURES = ("p99_ms", "rate")
Record = dict[str, Any]


def schedule(chosen: Sequence[str], repeat: int) -> list[tuple[int, str]]:
    """(round, scenario) in the order they are measured: every chosen scenario in round 1,
    then, round after round, those not in ONCE, always in the chosen order."""
    return [
        (n, name) for n in range(1, repeat + 1) for name in chosen if n == 1 or name not in ONCE
    ]


def median_index(values: Sequence[float]) -> int:
    """The index of the median of ``values`` (the lower middle one when there are an even
    number), so the median is always one of them; equal values are ranked in index order."""
    if not values:
        raise ValueError("no values")
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[(len(values) - 1) // 2]


def median_records(
    records: Sequence[Record],
    key: Callable[[Record], Hashable],
    by: str,
    figures: Sequence[str],
) -> list[Record]:
    """One record per ``key``, in the order keys first appear: the one whose ``by`` is the
    median over its rounds, with ``rounds`` (every round's ``figures``, in round order).
    Each record must carry its ``round``."""
    groups: dict[Hashable, list[Record]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    out = []
    for group in groups.values():
        group = sorted(group, key=lambda r: int(r["round"]))  # noqa: PLW2901
        picked = group[median_index([float(r[by]) for r in group])]
        rounds = [{"round": r["round"], **{f: r.get(f) for f in figures}} for r in group]
        out.append({**picked, "rounds": rounds})
    return out


def first_records(records: Sequence[Record], key: Callable[[Record], Hashable]) -> list[Record]:
    """The first round's record per ``key`` (what does not vary with noise: counts, set-ups)."""
    seen: dict[Hashable, Record] = {}
    for record in sorted(records, key=lambda r: int(r["round"])):
        seen.setdefault(key(record), record)
    return list(seen.values())


def _point_key(p: Record) -> Hashable:
    return (str(p["scenario"]), int(p["concurrency"]))


def _scenario(r: Record) -> Hashable:
    return str(r["scenario"])


def _measured_only(points: list[Record]) -> list[Record]:
    """Without the ``unavailable`` rows of a system that was measured in another round."""
    measured = {p["scenario"] for p in points if not p.get("unavailable")}
    return [p for p in points if not (p.get("unavailable") and p["scenario"] in measured)]


def tag(records: Sequence[Record], rounds: Sequence[int]) -> list[Record]:
    """``records`` (as appended, in order) each with the round it was measured in."""
    if len(records) != len(rounds):
        raise ValueError(f"{len(records)} records but {len(rounds)} round numbers")
    return [{**r, "round": n} for r, n in zip(records, rounds, strict=True)]


def combine(
    results: Record, rounds: dict[str, list[int]], repeat: int, chosen: Sequence[str]
) -> Record:
    """``results`` of a run of ``chosen`` in ``repeat`` rounds, every list reduced to one
    record per point. ``rounds[name]`` is the round of each record of ``results[name]``."""

    def tagged(name: str) -> list[Record]:
        return tag(results.get(name) or [], rounds.get(name, []))

    points = median_records(tagged("points"), _point_key, "rps", POINT_FIGURES)
    return {
        **results,
        "repeat": {"rounds": repeat, "once": [s for s in chosen if s in ONCE]},
        "points": _measured_only(points),
        "stream_points": median_records(tagged("stream_points"), _point_key, "rps",
                                        POINT_FIGURES),
        "chain_points": median_records(tagged("chain_points"), _point_key, "rps",
                                       POINT_FIGURES),
        "probes": median_records(tagged("probes"), _scenario, "ttfe_p50_ms", PROBE_FIGURES),
        "openloop": median_records(tagged("openloop"), _scenario, "p99_ms", OPENLOOP_FIGURES),
        "redis_probes": first_records(tagged("redis_probes"), _scenario),
        "launches": first_records(tagged("launches"), _scenario),
    }  # fmt: skip


def per_round(points: Sequence[Record], value: Callable[..., float]) -> list[float]:
    """``value(*figures)`` for every round in which each of ``points`` was measured, where
    ``figures`` are the points' records of that round; [] for points without rounds."""
    if not points or not all(p.get("rounds") for p in points):
        return []
    by_round = [{r["round"]: r for r in p["rounds"]} for p in points]
    common = sorted(set.intersection(*(set(rounds) for rounds in by_round)))
    out = []
    for n in common:
        figures = [rounds[n] for rounds in by_round]
        try:
            out.append(float(value(*figures)))
        except (ZeroDivisionError, TypeError):  # a round that answered nothing, or lacks it
            continue
    return out


def spread(
    values: Sequence[float],
    number: Callable[[float], str],
    unit: str = "",
    label: str = " over {n} rounds",
) -> str:
    """`` (lo-hi<unit><label>)`` for two or more values, else ''; ``{n}`` in ``label`` is the
    count. Signed figures are joined with "to" so a minus sign is not read as a dash."""
    if len(values) < 2:
        return ""
    lo, hi = number(min(values)), number(max(values))
    joined = f"{lo} to {hi}" if lo[:1] in "+-" or hi[:1] in "+-" else f"{lo}-{hi}"
    return f" ({joined}{unit}{label.format(n=len(values))})"
