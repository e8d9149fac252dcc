"""The words around the numbers: method notes, the performance targets, and what a run says.

Every sentence is computed from the run it describes, so a rerun cannot leave stale claims.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.idle import HALT_NOTE, halts_at_once
from benchmarks.measure import NOISY_CORES
from benchmarks.repeat import per_round, spread
from benchmarks.report_openloop import p99_spread

# The targets, one worker at c=16 (CPU, throughput) and c=1 (added p50); each has a stretch.
CPU_BUDGET_US = 400.0
CPU_STRETCH_US = 300.0
THROUGHPUT_SHARE = 0.50
THROUGHPUT_STRETCH = 0.70
ADDED_P50_MS = 0.8
ADDED_P50_STRETCH_MS = 0.6
# Redis round trips per request of a hop with a budget and a rate limit, at c=1 (one at a
# time, so nothing batches across requests): one before forwarding (rate and reserve), the
# task route's claim once the answer names the task, and the settle after the answer.
ROUND_TRIPS_C1 = 3.0
# The same with a calls budget and no rate limit: the claim's round trip alone, which carries
# the settle and the next call's reserve made ahead (decision 0109), one script (decision 0110).
ROUND_TRIPS_BUDGET_C1 = 1.0
# When the CPU budget was set, the bare Litestar + aiohttp proxy cost 224 µs/req at c=16;
# scaling by this run's (b1) carries the budget over to a slower or faster machine.
REFERENCE_PROXY_US = 224.0
# The stages of the targets' "full pipeline", by the module each would live in (broker/stages/).
FULL_PIPELINE = {
    "authenticate": "authentication",
    "policy": "chain policy",
    "guards": "guards",
    "budget": "budgets",
    "audit": "audit",
    "mint": "token minting",
}


def missing_stages(results: dict[str, Any]) -> str:
    present = set(results.get("broker_stages", []))
    missing = [label for module, label in FULL_PIPELINE.items() if module not in present]
    return ", ".join(missing) if missing else ""


def _at(results: dict[str, Any], scenario: str, c: int, key: str = "points") -> dict[str, Any]:
    for p in results[key]:
        if p["scenario"] == scenario and p["concurrency"] == c:
            return dict(p)
    return {}


def _base(results: dict[str, Any], scenario: str, point: dict[str, Any]) -> dict[str, Any]:
    """``scenario``'s point from the same run as ``point`` (rows kept by --merge carry theirs)."""
    from benchmarks.report import base

    return base(results, scenario, point) or {} if point else {}


def method_notes() -> list[str]:
    text = (
        "How: wrk (one thread, closed loop: each connection sends its next request when the "
        "last answer arrives) POSTs a fixed A2A 1.0 `SendMessage`; c is wrk's connection count. "
        "The upstream is a raw ASGI app under uvicorn+uvloop+httptools answering a completed "
        "task with a fresh task id (so the broker records a task route per request, as in real "
        "use). CPU µs/req is utime+stime of the system under test's process tree during the "
        "point, over wrk's request count; CPU use is that CPU time over wall time (100% = one "
        "core saturated) and kernel its system-time share; RSS is read after the point. "
        "Latency ratios are to (a), throughput ratios to (b1), both at the same c in the same "
        "run. Every answer is checked once by hand before wrk starts (wrk itself only counts "
        "non-2xx as errors). For (a) the CPU column is the upstream's own. The broker logs one "
        "JSON line per request to a file, as in production. Foreign is the CPU (in cores) "
        "that processes outside the run used during the point; before each point the run "
        "waits (within `--max-wait`) for the machine to be quiet."
    )
    return [text]


def _disturbed(*points: dict[str, Any] | None) -> str:
    """" ?" if another process used more than NOISY_CORES during any of ``points``."""
    noisy = any(p and p.get("foreign_cores", 0.0) > NOISY_CORES for p in points)
    return " ?" if noisy else ""


def _percent(value: float) -> str:
    return f"{value * 100:.0f}"


def _cpu_spread(point: dict[str, Any]) -> str:
    return spread(per_round([point], lambda p: p["cpu_us_per_req"]), "{:,.0f}".format, " µs")


def _share_spread(point: dict[str, Any], base: dict[str, Any]) -> str:
    """Throughput over the baseline's, round by round (--repeat)."""
    shares = per_round([point, base], lambda p, b: p["rps"] / b["rps"])
    return spread(shares, _percent, "%")


def _added_spread(point: dict[str, Any], base: dict[str, Any]) -> str:
    """Added p50 over the baseline's, round by round (--repeat)."""
    added = per_round([point, base], lambda p, b: p["p50_ms"] - b["p50_ms"])
    return spread(added, "{:+.2f}".format, " ms")


def _row(name: str, value: str, ok: bool | None, want: str, gap: str = "") -> str:
    mark = "n/a" if ok is None else ("met" if ok else "**not met**")
    return f"| {name} | {want} | {value} | {mark} | {gap if ok is False else ''} |"


def _over(value: float, limit: float, unit: str) -> str:
    digits = 1 if unit == " ms" else 0
    return f"{value - limit:+,.{digits}f}{unit} over, {value / limit:.1f}x the limit"


def targets(results: dict[str, Any]) -> list[str]:
    stages = ", ".join(f"`{s}`" for s in results.get("broker_stages", [])) or "(unknown)"
    missing = missing_stages(results)
    lines = [
        f"The broker measured here has these stage modules in `broker/stages/`: {stages}, run "
        "with the default settings (plus loopback egress). "
        + (
            f"Of the targets' full pipeline it lacks {missing}, so a target met here is "
            "necessary, not sufficient."
            if missing
            else "Every stage of the targets' full pipeline is present."
        ),
        "",
        "| target (one worker) | wanted | measured | | how far off |",
        "|---|---|---|---|---|",
    ]
    b16 = _at(results, "b1", 16)
    scale = b16["cpu_us_per_req"] / REFERENCE_PROXY_US if b16 else 0.0
    for scen, label in (("e", "redis (the target's store)"), ("c", "memory")):
        p1, p16 = _at(results, scen, 1), _at(results, scen, 16)
        if not p16:
            continue
        if p16.get("origin"):
            label = f"{label} (kept from {p16['origin'].split(',')[0]})"  # noqa: PLW2901
        a1, b16_same = _base(results, "a", p1), _base(results, "b1", p16)
        cpu = p16["cpu_us_per_req"]
        lines.append(_row(f"broker CPU per request at c=16, {label}",
                          f"{cpu:,.0f} µs{_cpu_spread(p16)}{_disturbed(p16)}",
                          cpu <= CPU_BUDGET_US,
                          f"≤ {CPU_BUDGET_US:.0f} µs (stretch {CPU_STRETCH_US:.0f})",
                          _over(cpu, CPU_BUDGET_US, " µs")))  # fmt: skip
        if b16_same:
            sc = b16_same["cpu_us_per_req"] / REFERENCE_PROXY_US
            scaled = CPU_BUDGET_US * sc
            lines.append(_row(f"the same, budget scaled by that run's (b1) cost, {label}",
                              f"{cpu:,.0f} µs", cpu <= scaled, f"≤ {scaled:,.0f} µs",
                              _over(cpu, scaled, " µs")))  # fmt: skip
            share = p16["rps"] / b16_same["rps"]
            lines.append(_row(f"throughput vs (b1) at c=16, {label}",
                              f"{share:.0%}{_share_spread(p16, b16_same)}"
                              f"{_disturbed(p16, b16_same)}",
                              share >= THROUGHPUT_SHARE,
                              f"≥ {THROUGHPUT_SHARE:.0%} (stretch {THROUGHPUT_STRETCH:.0%})",
                              f"{THROUGHPUT_SHARE / share:.1f}x the throughput needed "
                              f"({p16['rps']:,.0f} → {THROUGHPUT_SHARE * b16_same['rps']:,.0f} "
                              "req/s)"))  # fmt: skip
        if p1 and a1:
            added = p1["p50_ms"] - a1["p50_ms"]
            lines.append(_row(f"added p50 vs (a) at c=1, {label}",
                              f"{added:+.2f} ms{_added_spread(p1, a1)}{_disturbed(p1, a1)}",
                              added <= ADDED_P50_MS,
                              f"≤ +{ADDED_P50_MS} ms (stretch +{ADDED_P50_STRETCH_MS})",
                              _over(added, ADDED_P50_MS, " ms")))  # fmt: skip
    lines += [*_round_trip_rows(results), *_audit_rows(results), *_open_loop_rows(results),
              *_llm_rows(results), *_chain_rows(results), *_scale_rows(results)]  # fmt: skip
    missed = sum(1 for line in lines if "**not met**" in line)
    measured = sum(1 for line in lines if "| met |" in line or "| **not met** |" in line)
    unmeasured = sum(1 for line in lines if "| n/a |" in line)
    lines += ["", f"**Plainly: {measured - missed} of the {measured} measured performance targets "
              f"are met, {missed} are not** (the last column says by how much)"
              + (f"; {unmeasured} not measured in this run." if unmeasured else ".")
              + (_without_metering(results) if missed else "")]  # fmt: skip
    if any(" ?" in line for line in lines):
        lines += ["", "`?` marks a figure taken while other processes used more than "
                  f"{NOISY_CORES} cores of this machine's 2: the broker then got only part of its "
                  "core, so its throughput and latency (and their ratios to (a) and (b1), which "
                  "were disturbed differently) say little; CPU per request is the steadier "
                  "reading, though contention inflates it too."]  # fmt: skip
    if scale:
        lines += ["", f"The CPU budget was set where the bare Litestar + aiohttp proxy cost "
                  f"{REFERENCE_PROXY_US:.0f} µs per request (measured on this kind of machine "
                  "when the budget was set); in this run (b1) "
                  f"costs {b16['cpu_us_per_req']:,.0f} µs, {scale:.2f}x that, so the scaled row "
                  + ("is the fairer reading of the CPU target on this slower machine."
                     if scale > 1 else
                     "holds the broker to a tighter budget than the target's own on this "
                     "faster machine.")]  # fmt: skip
    return lines


# Redis round trips per request at c=1 held to a limit: (scenario, what it meters, the limit,
# what the limit is made of).
_ROUND_TRIP_LIMITS = (
    ("r-budget", "calls budget", ROUND_TRIPS_BUDGET_C1,
     "the task's claim, with the settle and the next call's reserve made ahead (decision 0109), "
     "one script (decision 0110)"),
    ("r-rate", "budget and rate limit", ROUND_TRIPS_C1,
     "one before forwarding (rate, and a reserve not made ahead), the task's claim, the settle "
     "after the answer"),
)  # fmt: skip


def _round_trip_rows(results: dict[str, Any]) -> list[str]:
    rows = []
    for scenario, meters, limit, made_of in _ROUND_TRIP_LIMITS:
        reads = _at(results, scenario, 1).get("redis_reads_per_req")
        if reads is None:
            continue
        rows.append(_row(f"Redis round trips per request, {meters} ({scenario}), c=1",
                         f"{reads:.2f}", reads <= limit + 0.1, f"{made_of}: ≤ {limit:g}",
                         f"{reads - limit:+.2f} round trips"))  # fmt: skip
    return rows


def _audit_rows(results: dict[str, Any]) -> list[str]:
    rows = []
    for scen in ("e", "c"):
        for c in (16, 64):
            p = _at(results, scen, c)
            if not p or p.get("audit_fsyncs_per_req") is None:
                continue
            fsyncs = p["audit_fsyncs_per_req"]
            rows.append(_row(f"audit fsyncs per request at c={c}, ({scen}) (group commit)",
                             f"{fsyncs:.2f} ({p['audit_records_per_fsync']:.1f} records each)",
                             fsyncs < 1.0, "< 1: concurrent requests share an fsync",
                             "every request paid its own fsync"))  # fmt: skip
    return rows


def _open_loop_rows(results: dict[str, Any]) -> list[str]:
    records = results.get("openloop") or []
    if not records:
        return [_row("p99 at 60% of saturation throughput", "not measured in this run", None,
                     "≤ 15 ms")]  # fmt: skip
    rows = []
    for r in records:
        p99, limit = r["broker"]["p99_ms"], r["p99_target_ms"]
        rounds = p99_spread(r)
        rows.append(_row(f"p99 at 60% of saturation ({r['rate']:,.0f} req/s, open loop), "
                         f"{r['store']} store", f"{p99:.1f} ms{rounds}", p99 <= limit,
                         f"≤ {limit:g} ms", _over(p99, limit, " ms")))  # fmt: skip
    return rows


def _llm_rows(results: dict[str, Any]) -> list[str]:
    from benchmarks.report_llm import THROUGHPUT_TARGET, comparisons, is_llm, ratio_spread

    pairs = comparisons([p for p in results["points"] if is_llm(p)])
    want = f"≥ {THROUGHPUT_TARGET:g}x and lower p99, every c"
    if not pairs:
        return [_row("LLM endpoint vs LiteLLM's proxy", "not measured in this run", None, want)]
    lowest = min(pairs, key=lambda cmp: cmp["ratio"])
    ratios = ", ".join(f"{cmp['ratio']:.1f}x{ratio_spread(cmp)}" for cmp in pairs)
    rounds = max((len(cmp["broker"].get("rounds", [])) for cmp in pairs), default=0)
    p99_ok = all(cmp["p99_met"] for cmp in pairs)
    ok = all(cmp["throughput_met"] for cmp in pairs) and p99_ok
    of = f"; in brackets the lowest-highest of {rounds} rounds" if rounds > 1 else ""
    value = f"{ratios} (c={', '.join(str(cmp['c']) for cmp in pairs)}{of}); p99 " + (
        "lower at every c" if p99_ok else "not lower at every c"
    )
    gap = (f"{THROUGHPUT_TARGET / lowest['ratio']:.1f}x short at c={lowest['c']}"
           if lowest["ratio"] < THROUGHPUT_TARGET else "p99")  # fmt: skip
    return [_row("LLM endpoint throughput vs LiteLLM's proxy", value, ok, want, gap)]


def _chain_rows(results: dict[str, Any]) -> list[str]:
    from benchmarks.report_chain import HOPS, TARGET_SPREAD, growth_spread

    idx = {(p["mode"], p["depth"], p["concurrency"]): p for p in results.get("chain_points", [])}
    rows = []
    for c in sorted({c for mode, _, c in idx if mode == "broker"}):
        got = [idx.get(("broker", d, c)) for d in (1, 2, HOPS - 1, HOPS)]
        if not all(got):
            continue
        first, second, before_last, deepest = (p["cpu_us_per_req"] for p in got if p)
        hop2, hop_last = second - first, deepest - before_last
        growth = hop_last / hop2 - 1 if hop2 > 0 else float("inf")
        rows.append(_row(f"per-hop cost constant with depth (CPU the {HOPS}th hop adds vs the "
                         f"2nd), c={c}", f"{hop_last:,.0f} vs {hop2:,.0f} µs ({growth:+.0%})"
                         + growth_spread([p for p in got if p]),
                         abs(growth) <= TARGET_SPREAD, f"within ±{TARGET_SPREAD:.0%}",
                         f"{abs(growth):.0%} apart"))  # fmt: skip
    if not rows:
        return [_row("per-hop cost constant with depth", "not measured in this run", None,
                     "within ±15%")]  # fmt: skip
    return rows


def _scale_rows(results: dict[str, Any]) -> list[str]:
    from benchmarks.report_stages import SCALE_TOLERANCE

    rows = []
    for store in ("memory", "redis"):
        ratios = []
        for p in results["points"]:
            if p["scenario"] == f"h-{store}-10k":
                small = _base(results, f"h-{store}-small", p)
                if small:
                    ratios.append(p["cpu_us_per_req"] / small["cpu_us_per_req"])
        if not ratios:
            continue
        mean = statistics.geometric_mean(ratios)
        rows.append(_row(f"CPU per request with 10,000 agents and 10,000 policy lines vs 2 and "
                         f"2, {store} store", f"{mean:.2f}x (geometric mean over c)",
                         mean <= 1 + SCALE_TOLERANCE, f"≤ {1 + SCALE_TOLERANCE:.2f}x",
                         f"{mean:.2f}x"))  # fmt: skip
    if not rows:
        return [_row("decision cost vs registered agents and policy lines",
                     "not measured in this run", None, "no growth")]  # fmt: skip
    return rows


def _without_metering(results: dict[str, Any]) -> str:
    none = _at(results, "r-none", 16)
    if not none:
        return ""
    cpu = none["cpu_us_per_req"]
    b16 = _base(results, "b1", none)
    share = f", {none['rps'] / b16['rps']:.0%} of (b1)'s throughput" if b16 else ""
    text = (f" Even with budgets and rate limits off (r-i) the broker on Redis costs {cpu:,.0f} µs "
            f"per request at c=16, {cpu / CPU_BUDGET_US:.1f}x the {CPU_BUDGET_US:.0f} µs budget"
            f"{share}.")  # fmt: skip
    budget = _at(results, "r-budget", 16)
    if budget and budget["cpu_us_per_req"] > CPU_BUDGET_US:
        added = budget["cpu_us_per_req"] - cpu
        excess = budget["cpu_us_per_req"] - CPU_BUDGET_US
        text += (f" The caller's budget adds {added:+,.0f} µs of the {excess:,.0f} µs by which "
                 f"(r-ii) misses it ({added / excess:.0%}): metering is "
                 + ("most of the gap." if added > excess / 2
                    else "a part of the gap, not most of it."))  # fmt: skip
    return text


def _client_choice(results: dict[str, Any]) -> list[str]:
    pairs = [(c, _at(results, "b1", c), _at(results, "b2", c)) for c in (1, 16, 64)]
    pairs = [(c, b1, b2) for c, b1, b2 in pairs if b1 and b2]
    if not pairs:
        return []
    parts = [
        f"c={c}: {b1['rps']:,.0f} vs {b2['rps']:,.0f} req/s ({b1['rps'] / b2['rps']:.1f}x), "
        f"{b1['cpu_us_per_req']:,.0f} vs {b2['cpu_us_per_req']:,.0f} µs CPU/req"
        for c, b1, b2 in pairs
    ]
    wins = all(b1["rps"] > b2["rps"] for _, b1, b2 in pairs)
    verdict = (
        "aiohttp is faster at every concurrency, so httpx stays off the hot path; the broker's "
        "upstream client is leaner still (`broker/outbound/http11.py`, a pooled HTTP/1.1 client "
        "on httptools, decision 0071), with aiohttp kept for card fetches."
        if wins
        else "aiohttp is not faster than httpx at every concurrency here: revisit the clients."
    )
    runs = {p.get("origin") for _, b1, b2 in pairs for p in (b1, b2)}
    if len(runs) > 1:
        verdict += " (Careful: (b1) and (b2) here come from different runs, see the kept rows.)"
    return [f"* **Upstream client**: aiohttp (b1) vs httpx (b2), same "
            f"Litestar proxy: {'; '.join(parts)}. {verdict}"]  # fmt: skip


def _broker_cost(results: dict[str, Any]) -> list[str]:
    out = []
    for scen, label in (("c", "memory store"), ("e", "redis store")):
        p16, p1 = _at(results, scen, 16), _at(results, scen, 1)
        b16, a1, b1 = _base(results, "b1", p16), _base(results, "a", p1), _base(results, "b1", p1)
        if p16.get("origin"):
            label = f"{label}, kept from {p16['origin'].split(',')[0]}"  # noqa: PLW2901
        if not (p16 and b16 and p1 and a1 and b1):
            continue
        extra = p16["cpu_us_per_req"] - b16["cpu_us_per_req"]
        left = CPU_BUDGET_US - p16["cpu_us_per_req"]
        out.append(
            f"* **Broker, {label}**: at c=16 {p16['rps']:,.0f} req/s = "
            f"{p16['rps'] / b16['rps']:.0%} of the bare proxy, "
            f"{p16['cpu_us_per_req']:,.0f} µs CPU/req, of which ~{extra:,.0f} µs is the pipeline "
            f"over the bare proxy's {b16['cpu_us_per_req']:,.0f} µs. At c=1 it adds "
            f"{p1['p50_ms'] - a1['p50_ms']:+.2f} ms p50 over direct (the bare proxy adds "
            f"{b1['p50_ms'] - a1['p50_ms']:+.2f} ms). "
            + _budget_left(left, missing_stages(results))
            + _c1_waits(results, scen, p1)
        )
    return out


# At c=1, what the audit and a budget add to the p50, each read from a pair of configurations
# of the same run: (label, with it, without it, the stores it applies to). The audit's fsync is
# waited on before forwarding; a budget's reserve is made ahead on Redis (decision 0109), so
# what it adds is its scripts in the claim's round trip and their CPU, not a wait of its own.
_C1_WAITS = (
    ("the audit file (its records, and their fsync, waited on before forwarding)",
     "d-audit", "d-off", ("c", "e")),
    ("a calls budget (reserved ahead, decision 0109: its script rides in the claim's round "
     "trip, decision 0110)", "r-budget", "r-none", ("e",)),
)  # fmt: skip


def _c1_waits(results: dict[str, Any], scenario: str, p1: dict[str, Any]) -> str:
    """What the audit's fsync and (on Redis) the budget add to the c=1 p50, where this run
    measured both configurations of each pair beside ``p1``; and, on a machine whose idle
    vCPUs halt at once, that every wait ends in a wake-up (decision 0107)."""
    parts = []
    for label, with_it, without, stores in _C1_WAITS:
        on, off = _at(results, with_it, 1), _at(results, without, 1)
        same_run = on.get("origin") == off.get("origin") == p1.get("origin")
        if scenario in stores and on and off and same_run:
            parts.append(
                f"{label} {on['p50_ms'] - off['p50_ms']:+.2f} ms (({with_it}) over ({without}))"
            )
    halts = f" {HALT_NOTE}" if halts_at_once(results.get("machine") or {}) else ""
    if not parts:
        return halts
    return (
        f" At c=1, these add to a request's p50: {'; '.join(parts)}."
        + halts
    )


def _budget_left(left: float, missing: str) -> str:
    rest = f" before {missing} exist" if missing else ""
    if left > 0:
        return f"That leaves ~{left:,.0f} µs of the {CPU_BUDGET_US:.0f} µs budget" + (
            f" for {missing}." if missing else "."
        )
    return f"That is {-left:,.0f} µs over the {CPU_BUDGET_US:.0f} µs budget{rest}."


def _streams(results: dict[str, Any]) -> list[str]:
    probes = {p["scenario"]: p for p in results["probes"]}
    d, b = probes.get("f-direct"), probes.get("f-broker")
    s_d, s_b = (
        _at(results, "f-direct", 16, "stream_points"),
        _at(results, "f-broker", 16, "stream_points"),
    )
    if not (d and b and s_d and s_b):
        return []
    events = results["stream_events"]
    return [
        f"* **Streaming**: the first event arrives {b['ttfe_p50_ms'] - d['ttfe_p50_ms']:+.2f} ms "
        f"later through the broker (p50 {b['ttfe_p50_ms']:.2f} vs {d['ttfe_p50_ms']:.2f} ms). "
        f"At c=16 the broker relays {s_b['rps'] * events:,.0f} events/s "
        f"({s_b['rps'] / s_d['rps']:.0%} of direct) at "
        f"{s_b['cpu_us_per_req'] / events:,.0f} µs CPU per event."
    ]


def _workers(results: dict[str, Any]) -> list[str]:
    w1, w2 = _at(results, "j-w1", 64), _at(results, "j-w2", 64)
    if not (w1 and w2):
        return []
    text = (
        f"* **Workers**: with both cores open to the broker (redis store), 2 workers serve "
        f"{w2['rps'] / w1['rps']:.2f}x the throughput of 1 at c=64 ({w2['rps']:,.0f} vs "
        f"{w1['rps']:,.0f} req/s), using {w2['cpu_util']:.0%} against {w1['cpu_util']:.0%} of "
        "a core. On 2 cores the second worker competes with the upstream, Redis and wrk, so "
        "this shows the scaling ceiling of this machine, not of the broker."
    )
    if _disturbed(w1, w2):
        text += (
            f" Other processes used {w1['foreign_cores']:.2f} and {w2['foreign_cores']:.2f} "
            "cores meanwhile: two processes then get a larger share of a contended machine than "
            "one, so the ratio says how the scheduler shared it as much as how the broker scales."
        )
    return [text]


def _floor(results: dict[str, Any]) -> list[str]:
    a64, b64 = _at(results, "a", 64), _at(results, "b1", 64)
    if not (a64 and b64):
        return []
    return [
        f"* **Generator headroom**: direct (a) reaches {a64['rps']:,.0f} req/s at c=64 with wrk "
        f"and the upstream sharing core 1, {a64['rps'] / b64['rps']:.1f}x the fastest proxy, so "
        "wrk and the upstream are not what limits the proxy and broker rows (whose CPU use "
        "column shows core 0 saturated from c=16 on)."
    ]


def _noise(results: dict[str, Any]) -> list[str]:
    noisy = [
        f"{p['scenario']} c={p['concurrency']} ({p['foreign_cores']:.2f})"
        for p in results["points"] + results["stream_points"]
        if p.get("foreign_cores", 0) > NOISY_CORES
    ]
    if not noisy:
        return [f"* **Machine noise**: no point saw more than {NOISY_CORES} cores of other work."]
    return [
        f"* **Machine noise**: other processes used more than {NOISY_CORES} cores during "
        f"{len(noisy)} point(s): {', '.join(noisy)}. Read those rows with care; rerun when the "
        "machine is quiet."
    ]


def _scripts(point: dict[str, Any]) -> float:
    return float(point.get("redis_scripts_per_req") or 0.0)


def _metering(results: dict[str, Any]) -> list[str]:
    out = []
    for c in (1, 16):
        none = _at(results, "r-none", c)
        parts = []
        for scen, label in (("r-budget", "a budget"), ("r-rate", "a budget and a rate limit")):
            p = _at(results, scen, c)
            if not (none and p):
                continue
            parts.append(
                f"with {label} {p['rps'] / none['rps']:.2f}x the req/s, "
                f"{p['cpu_us_per_req'] / none['cpu_us_per_req']:.2f}x the CPU per request "
                f"({p['cpu_us_per_req'] - none['cpu_us_per_req']:+,.0f} µs), "
                f"{p['p50_ms'] - none['p50_ms']:+.2f} ms p50, "
                f"{_scripts(p) - _scripts(none):+.2f} EVALSHA/req"
            )
        if parts:
            out.append(f"* **Metering, c={c}**: against the same broker on Redis with "
                       f"no budget or rate ({none['rps']:,.0f} req/s, "
                       f"{none['cpu_us_per_req']:,.0f} µs/req): "
                       + "; ".join(parts) + ".")  # fmt: skip
    return out


def _redis_trips(results: dict[str, Any]) -> list[str]:
    out = []
    for scen in ("r-none", "r-budget", "r-rate", "e"):
        p = _at(results, scen, 16)
        if p.get("redis_cmds_per_req") is None:
            continue
        out.append(f"{scen} {p['redis_scripts_per_req']:.2f} EVALSHA + "
                   f"{p['redis_reads_per_req']:.2f} reads, {p['redis_cmds_per_req']:.1f} commands "
                   f"in all, {p['redis_cpu_us_per_req']:,.0f} µs Redis CPU")  # fmt: skip
    if not out:
        return []
    return [
        "* **Redis per request (c=16)**: " + "; ".join(out) + ". Each atomic operation is one "
        "Lua script (`EVALSHA`): with no metering the task-route claim (`task_route_claim.lua`) "
        "and the task-tree add (`task_tree_add.lua`), sent together; a budget adds its reserve "
        "and its settle; a rate limit its GCRA check. Scripts that requests call in the same "
        "event-loop turn share one pipeline (`broker/stores/redis_batch.py`, decision 0010), "
        "so under load reads per request (round trips) fall below scripts per request."
    ]


def _gap(results: dict[str, Any]) -> list[str]:
    """Where the CPU target's gap is, from this run's own numbers: (b1), (d) and the profile."""
    b16, off, e16 = _at(results, "b1", 16), _at(results, "d-off", 16), _at(results, "e", 16)
    if not (b16 and off and e16):
        return []
    parts = [
        f"the bare proxy (b1) costs {b16['cpu_us_per_req']:,.0f} µs per request at c=16",
        f"the broker with every optional stage off (d-off: authentication, parsing, target "
        f"resolution, token minting, response inspection, the log line) "
        f"{off['cpu_us_per_req']:,.0f} µs, so {off['cpu_us_per_req'] - b16['cpu_us_per_req']:+,.0f}"
        " µs is the pipeline's own Python before any store, audit or policy",
    ]
    for scen, what in (("d-audit", "the fsync'd audit file"), ("d-redis", "the Redis store"),
                       ("d-policy", "a 1,000-rule policy"), ("d-budget", "a budget (memory)")):
        point = _at(results, scen, 16)
        if point:
            parts.append(f"{what} {point['cpu_us_per_req'] - off['cpu_us_per_req']:+,.0f} µs")
    parts.append(f"the full pipeline on Redis (e) {e16['cpu_us_per_req']:,.0f} µs")
    text = "* **Where the CPU gap is (c=16)**: " + "; ".join(parts) + "."
    profile = results.get("profile") or {}
    shares = {row["frame"]: row["share"] for row in profile.get("packages", [])}
    if shares:
        top = ", ".join(f"{name} {share:.0%}" for name, share in list(shares.items())[:6])
        text += f" The profile of (e) splits its own time as {top}."
    text += (
        " Next, by size: (1) the pipeline's own Python, which no store or audit setting removes "
        "(d-off against b1); the edge is raw ASGI, the stages are bound without a frame each "
        "(decision 0064), the upstream client is a lean HTTP/1.1 client (decision 0071), ids, "
        "log lines and outcome records are cheaper (decision 0073), a unary answer goes out "
        "in one write and is decoded once (decision 0077), so what is left is per-request "
        "work: the hop token's Ed25519 signature (`TokenMinter._seal`, the largest broker frame; "
        "agents verify it, so it stays; signed with libsodium, decision 0082), building and "
        "encoding the "
        "two audit records, parsing, and the HTTP server's own response path with uvloop's "
        "socket work (`Runner.run`: the kernel and the loop); (2) the audit file's fsync, on "
        "one thread per audit file (or on the loop for a lone small batch, decision 0073), "
        "written over zeros kept ahead so it journals no new size (decision 0074): its frame in "
        "the profile is mostly the kernel's fdatasync; (3) Redis: the hot scripts go out packed "
        "on kept connections (decision 0072), a token hop's checks ride in the first hop's "
        "round trips (decision 0075), the settle and the next call's reserve in the claim's, "
        "one script (decisions 0078, 0109, 0110), so what remains with a budget is one round "
        "trip per request at low concurrency, where nothing batches (two with a rate limit), "
        "each a send to Redis and a wake-up of the loop."
    )
    return [text]


def _open_loop_reading(results: dict[str, Any]) -> list[str]:
    """Why a rate that is 60% of wrk's saturation can still saturate the broker."""
    out = []
    for r in results.get("openloop") or []:
        broker, e1 = r["broker"], _at(results, "e" if r["store"] == "redis" else "c", 1)
        cpu = broker.get("sut_cpu_util")
        if cpu is None or cpu < 0.85:
            continue
        per_req = cpu / broker["achieved_rps"] * 1e6 if broker["achieved_rps"] else 0.0
        c1 = f" (at c=1 under wrk: {e1['cpu_us_per_req']:,.0f} µs)" if e1 else ""
        out.append(
            f"* **Open loop, {r['store']} store**: at {r['rate']:,.0f} req/s, 60% of what wrk "
            f"saturates it at, the broker's core was {cpu:.0%} busy: {per_req:,.0f} µs of CPU "
            f"per request{c1}, against the c=16/64 figures the saturation came from. Requests "
            "arriving evenly spaced rarely share an event-loop turn, so each pays its own "
            "wake-ups"
            + (", its own Redis round trips (little batching)" if r["store"] == "redis" else "")
            + " and its own audit fsync; the broker is then saturated, and the p99 is "
            "queueing. Those waits are cheap in themselves: a lone request runs about the "
            "same instructions as one at c=16, each more slowly, since every step starts "
            "with cold caches (decision 0084). Fewer instructions per request, and overlapping "
            "a request's serial waits, are the way to this target, not a bigger batch."
        )
    return out


def findings(results: dict[str, Any]) -> list[str]:
    lines = [
        *_gap(results),
        *_open_loop_reading(results),
        *_noise(results),
        *_client_choice(results),
        *_broker_cost(results),
        *_metering(results),
        *_redis_trips(results),
        *_streams(results),
        *_workers(results),
        *_floor(results),
    ]
    rounds = (results.get("repeat") or {}).get("rounds", 1)
    each = (f"the median of {rounds} alternated rounds of a few seconds each" if rounds > 1
            else "one run of a few seconds")  # fmt: skip
    lines += [
        f"* **Reading these numbers**: each figure is {each} on a shared "
        "2-vCPU VM: differences under ~10% are noise; rows marked `?` or with foreign CPU above "
        f"{NOISY_CORES} cores were disturbed by other work.",
    ]
    return lines
