"""Turn one run's results into docs/benchmarks.md and, if matplotlib is installed, a PNG plot."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from benchmarks import idle, verdict
from benchmarks.repeat import spread
from benchmarks.report_chain import chain_section
from benchmarks.report_llm import llm_section, without_llm
from benchmarks.report_openloop import openloop_section
from benchmarks.report_stages import STAGE_TITLES, scale_section, stages_section
from benchmarks.scenario_servers import TITLES as SERVER_TITLES
from benchmarks.scenario_servers import servers_section

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
    "r-none": "(r-i) broker, redis, no budget or rate",
    "r-budget": "(r-ii) broker, redis, budget",
    "r-rate": "(r-iii) broker, redis, budget + rate",
    **STAGE_TITLES,
    **SERVER_TITLES,
}
KEPT = " †"  # marks a row kept from an earlier run (``--merge``)
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
        "idle": idle.idle_policy(),
        "wrk": _run(["wrk", "-v"]).splitlines()[0] if _run(["wrk", "-v"]) else "",
        "libs": versions,
        "commit": _run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"]),
        "broker_uncommitted_files": len(dirty.splitlines()) if dirty else 0,
    }


def _by(points: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(p["scenario"], p["concurrency"]): p for p in points}


def base(results: dict[str, Any], scenario: str, point: dict[str, Any]) -> dict[str, Any] | None:
    """``scenario``'s point at ``point``'s concurrency from the same run as ``point``."""
    for b in results["points"] + results.get("baselines", []):
        if (b["scenario"], b["concurrency"], b.get("origin")) == (
            scenario, point["concurrency"], point.get("origin")):  # fmt: skip
            return dict(b)
    return None


def title(point: dict[str, Any]) -> str:
    name = str(TITLES.get(point["scenario"], point["scenario"]))
    return name + (KEPT if point.get("origin") else "")


def _ratio(value: float, base: dict[str, Any] | None, key: str) -> str:
    return f"{value / base[key]:.2f}" if base and base[key] else "-"


def _spread(p: dict[str, Any], key: str, number: str) -> str:
    """The point's spread over its rounds (--repeat), e.g. " (23,100-24,900)"."""
    values = [float(r[key]) for r in p.get("rounds", []) if r.get(key) is not None]
    return spread(values, number.format, label="")


def unary_table(results: dict[str, Any]) -> list[str]:
    points = results["points"]
    rows = [
        "| scenario | c | req/s | vs b1 | p50 ms | vs a | p99 ms | vs a | +p50 vs (a) ms "
        "| CPU µs/req | kernel | CPU use | RSS MB | errors | foreign |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in points:
        c = p["concurrency"]
        a, b1 = base(results, "a", p), base(results, "b1", p)
        added = f"{p['p50_ms'] - a['p50_ms']:+.2f}" if a else "-"
        rows.append(
            f"| {title(p)} | {c} | {p['rps']:,.0f}{_spread(p, 'rps', '{:,.0f}')} "
            f"| {_ratio(p['rps'], b1, 'rps')} | {p['p50_ms']:.2f} "
            f"| {_ratio(p['p50_ms'], a, 'p50_ms')} | {p['p99_ms']:.2f} "
            f"| {_ratio(p['p99_ms'], a, 'p99_ms')} | {added} | {p['cpu_us_per_req']:,.0f}"
            f"{_spread(p, 'cpu_us_per_req', '{:,.0f}')} "
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
        direct = idx.get(("f-direct", p["concurrency"]))
        rows.append(
            f"| {title(p)} | {p['concurrency']} "
            f"| {p['rps']:,.0f} | {p['rps'] * events:,.0f} "
            f"| {_ratio(p['rps'], direct, 'rps')} "
            f"| {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['cpu_us_per_req']:,.0f} "
            f"| {p['cpu_us_per_req'] / events:,.0f} | {p['rss_mb']:.0f} | {p['errors']} |"
        )
    rows += ["", "Time to first event, one stream at a time (aiohttp client on core 1):", "",
             "| scenario | streams | first event p50 ms | p99 ms | whole stream p50 ms |",
             "|---|--:|--:|--:|--:|"]  # fmt: skip
    for pr in results["probes"]:
        rows.append(
            f"| {title(pr)} | {pr['streams']} "
            f"| {pr['ttfe_p50_ms']:.2f} | {pr['ttfe_p99_ms']:.2f} | {pr['stream_p50_ms']:.2f} |"
        )
    return rows


def metering_table(results: dict[str, Any]) -> list[str]:
    """(r): the broker on Redis without metering, with a budget, with budget + rate limit."""
    points = [p for p in results["points"] if p["scenario"].startswith("r-")]
    if not points:
        return ["(scenario r not measured in this run: add `--scenarios r`)"]
    rows = [
        "The broker on the redis store, started three times in the same run with a different "
        "`[budgets]` section for the load generator's agent (`loadgen`): (i) none, so the budget "
        'stage meters nothing; (ii) `[budgets.agents] loadgen = [{ metric = "calls", window = '
        '"lifetime", limit = 10^12 }]`, as in (e); (iii) that plus `[budgets.agent_rates.'
        "loadgen] rate_per_s = 1000000, burst = 1000000`, a GCRA limit that never refuses. "
        "Ratios are to (i) at the same c; added p50 is over (i).",
        "",
        "| scenario | c | req/s | vs (i) | CPU µs/req | vs (i) | +CPU µs/req | p50 ms "
        "| +p50 vs (i) ms | p99 ms | Redis cmds/req | EVALSHA/req | Redis reads/req "
        "| Redis CPU µs/req | errors | foreign |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in points:
        none = base(results, "r-none", p)
        extra = f"{p['cpu_us_per_req'] - none['cpu_us_per_req']:+,.0f}" if none else "-"
        added = f"{p['p50_ms'] - none['p50_ms']:+.2f}" if none else "-"
        rows.append(
            f"| {title(p)} | {p['concurrency']} | {p['rps']:,.0f} "
            f"| {_ratio(p['rps'], none, 'rps')} "
            f"| {p['cpu_us_per_req']:,.0f} | {_ratio(p['cpu_us_per_req'], none, 'cpu_us_per_req')} "
            f"| {extra} | {p['p50_ms']:.2f} | {added} | {p['p99_ms']:.2f} "
            f"| {_num(p, 'redis_cmds_per_req')} | {_num(p, 'redis_scripts_per_req')} "
            f"| {_num(p, 'redis_reads_per_req')} | {_num(p, 'redis_cpu_us_per_req', '{:,.0f}')} "
            f"| {p['errors']} | {p.get('foreign_cores', 0):.2f} |"
        )
    return rows


def _num(p: dict[str, Any], key: str, fmt: str = "{:.2f}") -> str:
    value = p.get(key)
    return "-" if value is None else fmt.format(value)


def redis_section(results: dict[str, Any]) -> list[str]:
    """Redis's work per request for every broker point on the harness's private Redis."""
    points = [p for p in results["points"] if p.get("redis_cmds_per_req") is not None]
    if not points:
        return ["(no broker ran on the harness's private redis-server in this run)"]
    rows = [
        "Read from the private redis-server's `INFO` before and after each point, over wrk's "
        "request count (`benchmarks/redis_stats.py`). **Redis cmds** counts every command Redis "
        "ran: each `EVALSHA` and also each `redis.call` inside a script (Redis counts both in "
        "`INFO commandstats`), plus anything the broker sends outside scripts. **EVALSHA** is "
        "the scripts: the broker runs each atomic operation (a task-route claim, a task-tree add, "
        "a budget reserve or settle, a rate check) as one Lua script. **Redis reads** is "
        "`total_reads_processed`, the socket reads Redis made from its clients: one per round "
        "trip (a pipeline is one). Background work (expiry sweeps) is counted in too, spread "
        "over the requests.",
        "",
        "| scenario | c | broker CPU µs/req | Redis CPU µs/req | Redis cmds/req | EVALSHA/req "
        "| Redis reads/req | calls per request, by command |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for p in points:
        calls = ", ".join(f"`{k}` {v:.2f}" for k, v in p.get("redis_calls", {}).items()
                          if v >= 0.005)  # fmt: skip
        rows.append(
            f"| {title(p)} | {p['concurrency']} | {p['cpu_us_per_req']:,.0f} "
            f"| {_num(p, 'redis_cpu_us_per_req', '{:,.0f}')} | {_num(p, 'redis_cmds_per_req')} "
            f"| {_num(p, 'redis_scripts_per_req')} | {_num(p, 'redis_reads_per_req')} | {calls} |"
        )
    probes = results.get("redis_probes", [])
    if probes:
        rows += [
            "",
            "Who issues them: after each target's points, `MONITOR` is switched on while "
            f"{probes[0]['requests']} requests are sent one at a time, and every command is "
            "sorted by its source: the broker over the network (each is one round trip unless "
            "pipelined), or a Lua script (`[0 lua]` in MONITOR's output), per request:",
            "",
            "| scenario | sent by the broker /req | by command | run inside scripts /req "
            "| by command |",
            "|---|--:|---|--:|---|",
        ]
        for pr in probes:
            net = ", ".join(f"`{k}` {v:.2f}" for k, v in pr["network"].items())
            lua = ", ".join(f"`{k}` {v:.2f}" for k, v in pr["scripted"].items())
            rows.append(f"| {title(pr)} | {pr['network_per_req']:.2f} | {net} "
                        f"| {pr['scripted_per_req']:.2f} | {lua} |")  # fmt: skip
    return rows


def audit_section(results: dict[str, Any]) -> list[str]:
    """How the audit log's group commit batched, for every point that read the broker's
    audit counters."""
    points = [p for p in results["points"] if p.get("audit_fsyncs_per_req") is not None]
    if not points:
        return ["(no point read the broker's audit counters in this run)"]
    rows = [
        "Read from the broker's `/metrics` before and after each point "
        "(`benchmarks/audit_stats.py`): **fsyncs/req** is `audit_fsyncs_total` over wrk's "
        "request count, **records/fsync** the records appended (`audit_write_seconds` count) "
        "per fsync. Each request appends two records: its decision, durable before the request "
        "is forwarded, and its outcome, written at once and made durable by the next fsync "
        "(decision 0066). One writer takes every record queued while the previous fsync ran and "
        "makes them durable with one write and one `fdatasync` (group commit), so under "
        "concurrency one fsync covers the records of many requests, each decision still durable "
        "before its request is forwarded. Rows marked † from a run before outcomes rode on the "
        "next fsync show what that changed at c=1 (two fsyncs per request, one record each).",
        "",
        "| scenario | c | req/s | CPU µs/req | fsyncs/req | records/fsync |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for p in points:
        if not p["audit_fsyncs_per_req"]:
            continue  # the audit log is off, or not fsync'd
        rows.append(
            f"| {title(p)} | {p['concurrency']} | {p['rps']:,.0f} | {p['cpu_us_per_req']:,.0f} "
            f"| {p['audit_fsyncs_per_req']:.2f} | {p['audit_records_per_fsync']:.1f} |"
        )
    return rows


def _load_line(results: dict[str, Any]) -> list[str]:
    load = results.get("loadavg")
    if not load:
        return []
    line = (f"* **Load**: 1-minute load average {load[0]:g} when the run started, {load[1]:g} "
            f"when it ended, on {results['machine']['nproc']} CPUs (other work shares the "
            "machine: see the foreign column).")  # fmt: skip
    if "--scenarios" in results.get("command", "") and "--merge" in results.get("command", ""):
        line += (" A run of every scenario is long on a shared machine, so this run measured "
                 "the scenarios it names (the command above); the other rows are kept from "
                 "earlier runs (†, below).")  # fmt: skip
    return [line]


def repeat_line(results: dict[str, Any]) -> list[str]:
    """How a run with --repeat chose its points; nothing for a run of one round."""
    rep = results.get("repeat")
    if not rep:
        return []
    n = rep["rounds"]
    once = rep.get("once") or []
    line = (
        f"* **Rounds**: {n} (`--repeat {n}`); every point is the **median of {n} alternated "
        "rounds**: the chosen scenarios were measured in order, then again, "
        f"{n} times, so each baseline's points and the broker's were taken close together in "
        "time in every round, and each row is the round whose req/s is the median of the "
        f"{n} (a measured point: all its columns come from that one measurement"
        + ("; with an even count, the lower of the two middle rounds" if n % 2 == 0 else "")
        + "). In brackets: the lowest and highest over the rounds; in the targets table, "
        "ratios and differences paired round by round. Every round's figures are in "
        "`benchmarks/results/latest.json` (`rounds`)."
    )
    if once:
        line += (f" Measured once even so: {', '.join(once)} (each reports an aggregate of "
                 "its own).")  # fmt: skip
    return [line]


def kept_section(results: dict[str, Any]) -> list[str]:
    origins = list(dict.fromkeys(
        p["origin"] for p in results["points"] + results["stream_points"] if p.get("origin")
    ))  # fmt: skip
    if not origins:
        return []
    lines = []
    for origin in origins:
        scen = sorted({p["scenario"] for p in results["points"] + results["stream_points"]
                       if p.get("origin") == origin})  # fmt: skip
        lines.append(
            f"* **Kept from an earlier run** (`--merge`; rows marked{KEPT}): "
            f"{', '.join(scen)}, measured {origin}. Their ratios are to (a) and (b1) of that "
            "same run, not of this one."
        )
    return lines


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
    plotted = plot(without_llm(results), png)
    text = "\n".join(render(results, png.name if plotted else None))
    doc.write_text(text + "\n")
    return [str(doc)] + ([str(png)] if plotted else [])


# Not a scenario of this run (it measures correctness, not speed): where its numbers live.
FUZZ_SECTION = [
    "## Fuzz target (one reading of each request)",
    "",
    "`python -m benchmarks.fuzz_envelopes --count 100000` sends generated envelopes on both "
    "bindings through a broker to `benchmarks/fuzz_agent.py`, a real a2a-sdk agent that flags "
    "every request the broker should have refused. It is not part of this suite; the numbers of "
    "its last run (500s, crashes, requests that reached the agent wrongly) are in "
    "[security.md](security.md#the-fuzz-target). The cost of the reading itself: "
    "`python -m benchmarks.reading_costs` (decision 0015).",
    "",
]


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
        *repeat_line(results),
        f"* **Machine**: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}"
        f"{idle.describe(m)}, Python {m['python']}, {m['wrk']}.",
        *_load_line(results),
        f"* **Libraries**: {libs}.",
        f"* **Broker code**: {results['broker_code']}; when the run ended HEAD was "
        f"{m['commit']}, with {m['broker_uncommitted_files']} uncommitted path(s) under `broker/`.",
        f"* **Placement**: system under test on core {pin['sut']}; upstream, Redis, wrk and the "
        f"streaming probe on core {pin['rest']} (`taskset`). Redis: {results['redis'] or '-'}.",
        *kept_section(results),
        "",
        *verdict.method_notes(),
        "",
        "## Unary SendMessage (JSON-RPC)",
        "",
        *unary_table(without_llm(results)),
        "",
        "## Budgets and rate limits: what metering costs",
        "",
        *metering_table(results),
        "",
        "## Each stage alone: what it costs (d)",
        "",
        *stages_section(results),
        "",
        "## 10,000 agents and 10,000 policy lines (h)",
        "",
        *scale_section(results),
        "",
        "## Which HTTP server: `a2a-broker serve`, stock uvicorn, Granian (s)",
        "",
        *servers_section(results),
        "",
        "## Redis round trips and commands per request",
        "",
        *redis_section(results),
        "",
        "## Audit group commit: fsyncs per request",
        "",
        *audit_section(results),
        "",
        "## Streaming SendStreamingMessage (JSON-RPC, SSE)",
        "",
        *stream_table(results),
        "",
        *llm_section(results),
        "## Delegation chains of depth 1-5 (g)",
        "",
        *chain_section(results),
        "",
        "## p99 at 60% of saturation, open loop (p)",
        "",
        *openloop_section(results),
        "",
        "## Against the performance targets",
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
        *FUZZ_SECTION,
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
    kept = {p["scenario"] for p in points if p.get("origin")}
    conc = sorted({p["concurrency"] for p in points})
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    width = 0.8 / max(len(conc), 1)
    for i, c in enumerate(conc):
        xs = [n + i * width for n in range(len(scenarios))]
        left.bar(xs, [idx.get((s, c), {}).get("rps", 0) for s in scenarios], width, label=f"c={c}")
        added = []
        for s in scenarios:
            a = base(results, "a", idx[(s, c)]) if (s, c) in idx else None
            added.append(idx[(s, c)]["p50_ms"] - a["p50_ms"] if a else 0)
        right.bar(xs, added, width, label=f"c={c}")
    for ax, title in ((left, "requests/s"), (right, "added p50 latency vs (a), ms")):
        ax.set_xticks([n + width * (len(conc) - 1) / 2 for n in range(len(scenarios))])
        labels = [s + ("†" if s in kept else "") for s in scenarios]
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
        ax.set_title(title)
        ax.legend()
    right.set_yscale("symlog", linthresh=1.0)
    fig.suptitle(f"unary SendMessage, {results['started']}")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True
