"""Turn one run's results into docs/benchmarks.md and, if matplotlib is installed, a PNG plot."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from benchmarks import verdict

TITLES = {
    "a": "(a) direct to the upstream",
    "b1": "(b1) Litestar proxy + aiohttp",
    "b2": "(b2) Litestar proxy + httpx",
    "c": "(c) broker, memory store",
    "e": "(e) broker, redis store",
    "j-w1": "(j) broker, redis, 1 worker, 2 cores",
    "j-w2": "(j) broker, redis, 2 workers, 2 cores",
    "f-direct": "(f) streaming, direct",
    "f-broker": "(f) streaming, broker (memory)",
}
_LIBS = ("litestar", "uvicorn", "uvloop", "httptools", "aiohttp", "httpx", "redis", "msgspec")


def _run(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    return (done.stdout or done.stderr).strip()


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    versions = {}
    for lib in _LIBS:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = "-"
    root = Path(__file__).resolve().parents[1]
    dirty = _run(["git", "-C", str(root), "status", "--porcelain", "broker"])
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "wrk": _run(["wrk", "-v"]).splitlines()[0] if _run(["wrk", "-v"]) else "",
        "libs": versions,
        "commit": _run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"]),
        "broker_uncommitted_files": len(dirty.splitlines()) if dirty else 0,
    }


def _by(points: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(p["scenario"], p["concurrency"]): p for p in points}


def _ratio(value: float, base: dict[str, Any] | None, key: str) -> str:
    return f"{value / base[key]:.2f}" if base and base[key] else "-"


def unary_table(points: list[dict[str, Any]]) -> list[str]:
    idx = _by(points)
    rows = [
        "| scenario | c | req/s | vs b1 | p50 ms | vs a | p99 ms | vs a | +p50 vs (a) ms "
        "| CPU µs/req | kernel | CPU use | RSS MB | errors | foreign |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in points:
        c = p["concurrency"]
        a, b1 = idx.get(("a", c)), idx.get(("b1", c))
        added = f"{p['p50_ms'] - a['p50_ms']:+.2f}" if a else "-"
        rows.append(
            f"| {TITLES.get(p['scenario'], p['scenario'])} | {c} | {p['rps']:,.0f} "
            f"| {_ratio(p['rps'], b1, 'rps')} | {p['p50_ms']:.2f} "
            f"| {_ratio(p['p50_ms'], a, 'p50_ms')} | {p['p99_ms']:.2f} "
            f"| {_ratio(p['p99_ms'], a, 'p99_ms')} | {added} | {p['cpu_us_per_req']:,.0f} "
            f"| {p['sys_share']:.0%} | {p['cpu_util']:.0%} | {p['rss_mb']:.0f} | {p['errors']} "
            f"| {p.get('foreign_cores', 0):.2f} |"
        )
    return rows


def stream_table(results: dict[str, Any]) -> list[str]:
    points, events = results["stream_points"], results["stream_events"]
    if not points:
        return ["(streaming not measured in this run)"]
    idx = _by(points)
    rows = [
        f"Each stream is {events} SSE events (task, artifact updates, final status).",
        "",
        "| scenario | c | streams/s | events/s | vs direct | stream p50 ms | stream p99 ms "
        "| CPU µs/stream | CPU µs/event | RSS MB | errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in points:
        base = idx.get(("f-direct", p["concurrency"]))
        rows.append(
            f"| {TITLES.get(p['scenario'], p['scenario'])} | {p['concurrency']} "
            f"| {p['rps']:,.0f} | {p['rps'] * events:,.0f} "
            f"| {_ratio(p['rps'], base, 'rps')} "
            f"| {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['cpu_us_per_req']:,.0f} "
            f"| {p['cpu_us_per_req'] / events:,.0f} | {p['rss_mb']:.0f} | {p['errors']} |"
        )
    rows += ["", "Time to first event, one stream at a time (aiohttp client on core 1):", "",
             "| scenario | streams | first event p50 ms | p99 ms | whole stream p50 ms |",
             "|---|--:|--:|--:|--:|"]  # fmt: skip
    for pr in results["probes"]:
        rows.append(
            f"| {TITLES.get(pr['scenario'], pr['scenario'])} | {pr['streams']} "
            f"| {pr['ttfe_p50_ms']:.2f} | {pr['ttfe_p99_ms']:.2f} | {pr['stream_p50_ms']:.2f} |"
        )
    return rows


def profile_section(profile: dict[str, Any] | None) -> list[str]:
    if not profile:
        return ["Not profiled in this run (add `--profile`; needs `pip install py-spy`)."]
    if "error" in profile:
        return [f"Profiling failed: {profile['error']}"]
    return [
        f"py-spy, broker with the redis store held at c=16 by wrk, {profile['samples']:,} samples "
        f"of the broker's Python stack ({profile['in_broker_share']:.0%} of them inside a "
        "`broker/` function). Time in C (uvloop, the kernel) is charged to the Python frame "
        "that called it.",
        "",
        *_share_table("Own time by package", "package", profile.get("packages", [])),
        "",
        *_share_table("Top frames by own time", "frame", profile["top"]),
        "",
        *_share_table(
            "Broker functions by inclusive time", "function", profile.get("broker_inclusive", [])
        ),
    ]


def _share_table(title: str, what: str, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{title}:", "", f"| # | {what} | share of samples |", "|--:|---|--:|"]
    for n, row in enumerate(rows, 1):
        lines.append(f"| {n} | `{row['frame']}` | {row['share']:.1%} |")
    return lines


def write(results: dict[str, Any], doc: Path) -> list[str]:
    png = doc.with_suffix(".png")
    plotted = plot(results, png)
    text = "\n".join(render(results, png.name if plotted else None))
    doc.write_text(text + "\n")
    return [str(doc)] + ([str(png)] if plotted else [])


def render(results: dict[str, Any], png: str | None) -> list[str]:
    m = results["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libs"].items())
    pin = results["placement"]
    lines = [
        "# Benchmarks: what mediation costs",
        "",
        "Generated by the harness; do not edit by hand (rerun it instead).",
        "",
        "```",
        f".venv/bin/{results['command']}",
        "```",
        "",
        f"* **Date**: {results['started']} (UTC), {results['elapsed_s']} s in all, "
        f"{results['seconds_per_point']:g} s per point after a 1 s warm-up per target.",
        f"* **Machine**: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}, "
        f"Python {m['python']}, {m['wrk']}.",
        f"* **Libraries**: {libs}.",
        f"* **Broker code**: {results['broker_code']}; when the run ended HEAD was "
        f"{m['commit']}, with {m['broker_uncommitted_files']} uncommitted path(s) under `broker/`.",
        f"* **Placement**: system under test on core {pin['sut']}; upstream, Redis, wrk and the "
        f"streaming probe on core {pin['rest']} (`taskset`). Redis: {results['redis'] or '-'}.",
        "",
        *verdict.method_notes(),
        "",
        "## Unary SendMessage (JSON-RPC)",
        "",
        *unary_table(results["points"]),
        "",
        "## Streaming SendStreamingMessage (JSON-RPC, SSE)",
        "",
        *stream_table(results),
        "",
        "## Against the targets of issue 6",
        "",
        *verdict.targets(results),
        "",
        "## What this says",
        "",
        *verdict.findings(results),
        "",
        "## Where the broker's CPU goes",
        "",
        *profile_section(results.get("profile")),
        "",
    ]
    if png:
        at = lines.index("## Unary SendMessage (JSON-RPC)")
        lines[at:at] = [f"![throughput and added latency]({png})", ""]
    else:
        lines.append("(No plot: matplotlib is not installed; `pip install matplotlib` adds one.)")
    return lines


def plot(results: dict[str, Any], png: Path) -> bool:
    try:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib to get one)")
        return False
    points = results["points"]
    scenarios = list(dict.fromkeys(p["scenario"] for p in points))
    idx = _by(points)
    conc = sorted({p["concurrency"] for p in points})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(conc), 1)
    for i, c in enumerate(conc):
        xs = [n + i * width for n in range(len(scenarios))]
        left.bar(xs, [idx.get((s, c), {}).get("rps", 0) for s in scenarios], width, label=f"c={c}")
        base = idx.get(("a", c))
        added = [idx[(s, c)]["p50_ms"] - base["p50_ms"] if base and (s, c) in idx else 0
                 for s in scenarios]  # fmt: skip
        right.bar(xs, added, width, label=f"c={c}")
    for ax, title in ((left, "requests/s"), (right, "added p50 latency vs (a), ms")):
        ax.set_xticks([n + width * (len(conc) - 1) / 2 for n in range(len(scenarios))])
        ax.set_xticklabels(scenarios)
        ax.set_title(title)
        ax.legend()
    right.set_yscale("symlog", linthresh=1.0)
    fig.suptitle(f"unary SendMessage, {results['started']}")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True
