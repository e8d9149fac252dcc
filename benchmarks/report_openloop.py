"""The report section of scenario (p): p99 at 60% of saturation, open loop, against its target."""

from __future__ import annotations

from typing import Any

from benchmarks.repeat import spread

KEPT = " †"  # as in report.py: a row kept from an earlier run (``--merge``)


def _label(record: dict[str, Any]) -> str:
    return f"({record['scenario']}) broker, {record['store']} store" + (
        KEPT if record.get("origin") else ""
    )


def p99_spread(record: dict[str, Any]) -> str:
    """With --repeat: every round's p99, ``record`` being the round with the median (0108)."""
    return spread([r["p99_ms"] for r in record.get("rounds", [])], "{:.1f}".format, " ms")


def _verdict(record: dict[str, Any]) -> str:
    p99, limit = record["broker"]["p99_ms"], record["p99_target_ms"]
    rounds = p99_spread(record)
    if p99 <= limit:
        return f"met ({limit - p99:.1f} ms to spare){rounds}"
    return f"**not met** (+{p99 - limit:.1f} ms, {p99 / limit:.1f}x the limit){rounds}"


def _latencies(r: dict[str, Any]) -> str:
    return (
        f"{r['achieved_rps']:,.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} "
        f"| {r['p999_ms']:.2f} | {r['max_ms']:.2f} | {r['errors']} ({r['timeouts']})"
    )


def method() -> list[str]:
    return [
        "wrk is closed loop: a slow answer holds back that connection's next request, so wrk "
        "cannot hold a fixed rate and its percentiles leave out the requests a stall kept from "
        "being sent (coordinated omission). Here `benchmarks/openloop.py` (asyncio Protocols on "
        "uvloop, keep-alive connections, a pool that opens another connection whenever a "
        "request finds all of them busy, at most 256) sends the same `SendMessage` POST as wrk "
        "at a fixed rate (uniform arrivals) and times each request from its *intended* send "
        "time, so waiting for a connection, connecting, and the generator's own timer lateness "
        "all count against the target. For each store: wrk finds the broker's saturation "
        "throughput (closed loop at c=16 and c=64, the higher counts; full metering as in (e), "
        "one worker on core 0); the generator then offers 60% of it for the measured seconds "
        "after a 1 s warm-up at the same rate. With `--repeat` both steps are taken in every round "
        "and each store's row is the round whose broker p99 is the median (the last column "
        "gives every round's). Errors are non-2xx answers, connection errors "
        "and requests with no answer 10 s after the window (in brackets; they enter the "
        "percentiles at 10 s or more). Server CPU is the broker's process tree over the "
        "measured window (100% = one core).",
    ]


def broker_table(records: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| scenario | saturation req/s (wrk c=16 / c=64) | offered req/s (60%) | achieved req/s "
        "| p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors (timeouts) | broker CPU "
        "| connections | foreign | p99 ≤ 15 ms |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for rec in records:
        b, sat = rec["broker"], rec["saturation"]
        by_c = " / ".join(f"{v:,.0f}" for v in sat["rps_by_c"].values())
        rows.append(
            f"| {_label(rec)} | {sat['rps']:,.0f} ({by_c}) | {rec['rate']:,} | {_latencies(b)} "
            f"| {b['sut_cpu_util']:.0%} | {b['connections']} | {b['foreign_cores']:.2f} "
            f"| {_verdict(rec)} |"
        )
    return rows


def floor_table(records: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| the same rate, direct to the upstream | offered req/s | achieved req/s | p50 ms "
        "| p90 ms | p99 ms | p99.9 ms | max ms | errors (timeouts) | upstream CPU "
        "| generator CPU | generator µs/req | generator timer lag p99 ms | foreign |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for rec in records:
        d = rec["direct"]
        rows.append(
            f"| floor for {_label(rec)} | {rec['rate']:,} | {_latencies(d)} "
            f"| {d['sut_cpu_util']:.0%} | {d['gen_cpu_util']:.0%} | {d['gen_cpu_us_per_req']:.0f} "
            f"| {d['dispatch_lag_p99_ms']:.2f} | {d['foreign_cores']:.2f} |"
        )
    return rows


def headroom(records: list[dict[str, Any]]) -> list[str]:
    """Sentences on whether the generator, not the broker, could have set the numbers."""
    lines = []
    for rec in records:
        b, d = rec["broker"], rec["direct"]
        most = 1e6 / d["gen_cpu_us_per_req"] if d["gen_cpu_us_per_req"] else 0.0
        lines.append(
            f"* {_label(rec)}: at {rec['rate']:,} req/s the generator used "
            f"{d['gen_cpu_util']:.0%} of its core against the upstream "
            f"({b['gen_cpu_util']:.0%} against the broker), {d['gen_cpu_us_per_req']:.0f} µs "
            f"per request, so that core alone would let it offer about {most:,.0f} req/s "
            f"({most / rec['rate']:.0f}x this rate, before the upstream and Redis take their "
            f"share). Generator, upstream and core 1 together give a p99 floor of "
            f"{d['p99_ms']:.2f} ms; the broker's p99 of {b['p99_ms']:.2f} ms is "
            f"{b['p99_ms'] - d['p99_ms']:+.2f} ms over it."
        )
    return lines


def openloop_section(results: dict[str, Any]) -> list[str]:
    records = results.get("openloop", [])
    if not records:
        return ["(scenario p not measured in this run: add `--scenarios p`)"]
    lines = [*method(), "", *broker_table(records), "", *floor_table(records), ""]
    lines += ["Is the generator the bottleneck?", "", *headroom(records)]
    for origin in dict.fromkeys(r["origin"] for r in records if r.get("origin")):
        lines += ["", f"Rows marked{KEPT} were kept from an earlier run (`--merge`): {origin}."]
    return lines
