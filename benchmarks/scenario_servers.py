"""Scenario (s): which HTTP server carries the broker at the lowest cost.

The same broker app, memory store, whole pipeline, unary SendMessage, one worker on core 0,
started three times in one run: as ``a2a-broker serve`` ships it (uvicorn with the broker's
connection bounds: header, body and idle timeouts and a connection cap), as stock uvicorn
(uvloop + httptools, no bounds), and under Granian (Rust HTTP/1, which has a header-read
timeout of its own). The report gives every figure as a ratio to stock uvicorn at the same c.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmarks.targets import SERVERS, broker

if TYPE_CHECKING:
    from benchmarks.run import Run

ORDER = ("uvicorn", "serve", "granian")
BASE = "s-uvicorn"
TITLES = {
    "s-uvicorn": "(s) broker, memory, stock uvicorn",
    "s-serve": "(s) broker, memory, `a2a-broker serve`",
    "s-granian": "(s) broker, memory, Granian",
}
KEPT = " †"


def scenario_s(run: Run) -> None:
    for server in ORDER:
        with broker(run.env, store="memory", server=server) as target:
            run.unary(f"s-{server}", target)


def _ratio(value: float, base: dict[str, Any] | None, key: str) -> str:
    return f"{value / base[key]:.2f}" if base and base[key] else "-"


def servers_section(results: dict[str, Any]) -> list[str]:
    points = [p for p in results["points"] if p["scenario"].startswith("s-")]
    if not points:
        return ["(scenario s not measured in this run: add `--scenarios s`)"]
    bases = {(p["concurrency"], p.get("origin")): p for p in points if p["scenario"] == BASE}
    how = "; ".join(f"**{name}**: {text}" for name, text in SERVERS.items())
    rows = [
        f"One run, the memory store, the whole pipeline, one worker on core 0. {how}. "
        "Ratios are to stock uvicorn at the same c (CPU below 1.00 and req/s above 1.00 are "
        "cheaper). docs/decisions/0024 reads these figures.",
        "",
        "| server | c | req/s | vs uvicorn | CPU µs/req | vs uvicorn | p50 ms | vs uvicorn "
        "| p99 ms | vs uvicorn | RSS MB | errors | foreign |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in points:
        b = bases.get((p["concurrency"], p.get("origin")))
        name = TITLES.get(p["scenario"], p["scenario"]) + (KEPT if p.get("origin") else "")
        rows.append(
            f"| {name} | {p['concurrency']} | {p['rps']:,.0f} | {_ratio(p['rps'], b, 'rps')} "
            f"| {p['cpu_us_per_req']:,.0f} | {_ratio(p['cpu_us_per_req'], b, 'cpu_us_per_req')} "
            f"| {p['p50_ms']:.2f} | {_ratio(p['p50_ms'], b, 'p50_ms')} | {p['p99_ms']:.2f} "
            f"| {_ratio(p['p99_ms'], b, 'p99_ms')} | {p['rss_mb']:.0f} | {p['errors']} "
            f"| {p.get('foreign_cores', 0):.2f} |"
        )
    return rows
