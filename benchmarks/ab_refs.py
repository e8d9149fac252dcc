"""A change to the broker, end to end: scenario (e) (the broker on Redis with a calls budget, the
whole pipeline) for ``broker/`` as committed at a ref and for the working tree, side by side,
round by round in alternating order.

    .venv/bin/python -m benchmarks.ab_refs [--base REF] [--rounds R] [--seconds S]
        [--concurrency 1,16]

Both brokers run at once with the harness's own placement and private redis-server; each round
measures direct to the agent (a), then the two brokers, in an order that alternates, so the
machine's drift falls on both alike. Prints the medians over the rounds (req/s, p50, broker CPU
per request, Redis round trips per request) and the medians of the round-by-round differences
(the working tree over the base). On a shared machine a difference of a few percent needs
several rounds: read the per-round p50 differences it prints, not the median alone.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.measure import Point
from benchmarks.reserve_ahead import alternated, report
from benchmarks.targets import Placement, broker, describe_ref, environment, snapshot_broker


def run(
    base: str, rounds: int, seconds: float, cs: tuple[int, ...], work: Path
) -> dict[str, list[Point]]:
    """Every round: (a), then the base's broker and the working tree's, in an order that
    alternates; the points by "<name> c=<c>"."""
    base_src = snapshot_broker(base, work / "base-src")
    with environment(work / "logs", Placement(), 0) as env:
        tree_src = env.broker_src
        env.broker_src = base_src
        with broker(env, store="redis", metering="budget") as before:
            env.broker_src = tree_src
            with broker(env, store="redis", metering="budget") as after:
                return alternated(env, (("base", before), ("tree", after)), rounds, cs, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default="HEAD", help="the ref to compare the working tree to")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", default="1,16")
    args = parser.parse_args()
    cs = tuple(int(c) for c in args.concurrency.split(","))
    with tempfile.TemporaryDirectory() as work:
        points = run(args.base, args.rounds, args.seconds, cs, Path(work))
    labels = (("base", f"`broker/` at {describe_ref(args.base)}"), ("tree", "the working tree"))
    print("\n".join(report(points, cs, labels, "the working tree against the base")))


if __name__ == "__main__":
    main()
