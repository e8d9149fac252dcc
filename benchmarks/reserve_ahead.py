"""What reserving calls ahead buys a budgeted hop (decision 0109): scenario (e) (the broker on
Redis with a calls budget, the whole pipeline) with ``[budgets] reserve_ahead`` at 0 and at its
default, side by side, round by round in alternating order.

    .venv/bin/python -m benchmarks.reserve_ahead [--rounds R] [--seconds S] [--concurrency 1,16]

Both brokers run at once with the harness's own placement and private redis-server; each round
measures direct to the agent (a), then the two brokers, in an order that alternates. Prints
the medians over the rounds (req/s, p50, broker CPU per request, Redis round trips per request)
and the medians of the round-by-round differences. It is not part of ``benchmarks.run``: the
published report measures the broker as configured by default.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.measure import UNARY, Conditions, Point, measure
from benchmarks.targets import Env, Placement, Target, broker, direct, environment

DEFAULT_AHEAD = 32  # broker.settings.BudgetSettings.reserve_ahead


def measured(
    name: str, target: Target, cs: tuple[int, ...], seconds: float, env: Env
) -> list[Point]:
    """``target``'s points at ``cs``, named ``name``, with the harness's conditions."""
    conditions = Conditions(env.placement.rest, lambda: list(env.children), 5.0, retries=0)
    with tempfile.TemporaryDirectory() as work:
        return measure(name, target=target, workload=UNARY, concurrencies=cs, seconds=seconds,
                       work_dir=Path(work), conditions=conditions)  # fmt: skip


def run(rounds: int, seconds: float, cs: tuple[int, ...], log_dir: Path) -> dict[str, list[Point]]:
    """Every round: (a), then the broker without and with calls reserved ahead, the two in an
    order that alternates; the points by "<name> c=<c>"."""
    with environment(log_dir, Placement(), 0) as env:
        off_settings = {"reserve_ahead": 0}
        with broker(env, store="redis", metering="budget", budget_settings=off_settings) as off, \
                broker(env, store="redis", metering="budget") as on:  # fmt: skip
            return alternated(env, (("off", off), ("on", on)), rounds, cs, seconds)


def alternated(
    env: Env, pair: tuple[tuple[str, Target], tuple[str, Target]], rounds: int,
    cs: tuple[int, ...], seconds: float,
) -> dict[str, list[Point]]:  # fmt: skip
    """Every round: (a), then the two named targets of ``pair``, in an order that alternates;
    the points by "<name> c=<c>"."""
    points: dict[str, list[Point]] = {}
    for n in range(rounds):
        both = list(pair) if n % 2 == 0 else list(pair[::-1])
        for name, target in [("a", direct(env)), *both]:
            for point in measured(name, target, cs, seconds, env):
                points.setdefault(f"{name} c={point.concurrency}", []).append(point)
    return points


LABELS = (("off", "reserve_ahead = 0"), ("on", f"reserve_ahead = {DEFAULT_AHEAD}"))


def report(
    points: dict[str, list[Point]],
    cs: tuple[int, ...],
    labels: tuple[tuple[str, str], tuple[str, str]] = LABELS,
    versus: str = "reserved ahead against not",
) -> list[str]:
    """Medians over the rounds, and the medians of the paired differences (the second of
    ``labels``, by its key in ``points``, over the first; ``versus`` says so)."""
    lines = [
        "| (e) | c | req/s | p50 ms | added p50 ms over (a) | broker CPU µs/req "
        "| Redis round trips/req |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    (first, _), (second, _) = labels
    for c in cs:
        a = points[f"a c={c}"]
        for name, label in labels:
            ps = points[f"{name} c={c}"]
            added = statistics.median(p.p50_ms - pa.p50_ms for p, pa in zip(ps, a, strict=True))
            reads = [p.redis_reads_per_req for p in ps if p.redis_reads_per_req is not None]
            lines.append(
                f"| {label} | {c} | {statistics.median(p.rps for p in ps):,.0f} "
                f"| {statistics.median(p.p50_ms for p in ps):.3f} | {added:+.3f} "
                f"| {statistics.median(p.cpu_us_per_req for p in ps):,.0f} "
                f"| {f'{statistics.median(reads):.2f}' if reads else 'n/a'} |"
            )
    lines.append("")
    for c in cs:
        off, on = points[f"{first} c={c}"], points[f"{second} c={c}"]
        p50 = [b.p50_ms - a.p50_ms for b, a in zip(on, off, strict=True)]
        rps = [b.rps / a.rps - 1 for b, a in zip(on, off, strict=True)]
        cpu = [b.cpu_us_per_req - a.cpu_us_per_req for b, a in zip(on, off, strict=True)]
        lines.append(
            f"* c={c}, {versus}: p50 {statistics.median(p50):+.3f} ms, req/s "
            f"{statistics.median(rps):+.1%}, broker CPU {statistics.median(cpu):+,.0f} µs/req "
            f"(medians of {len(p50)} paired rounds; p50 differences "
            f"{', '.join(f'{x:+.3f}' for x in p50)})."
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", default="1,16")
    args = parser.parse_args()
    cs = tuple(int(c) for c in args.concurrency.split(","))
    with tempfile.TemporaryDirectory() as logs:
        points = run(args.rounds, args.seconds, cs, Path(logs))
    print("\n".join(report(points, cs)))


if __name__ == "__main__":
    main()
