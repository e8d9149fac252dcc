"""Scenario (g) in docs/benchmarks.md: what each hop of a delegation chain costs, by depth."""

from __future__ import annotations

from typing import Any

from benchmarks.measure import NOISY_CORES
from benchmarks.repeat import per_round, spread
from benchmarks.scenario_chain import HOPS, POOL_SIZE

TARGET_SPREAD = 0.15  # per-hop broker CPU at the deepest chain within this of depth 1
_KEPT = " †"

Index = dict[tuple[str, int, int], dict[str, Any]]


def _index(points: list[dict[str, Any]]) -> Index:
    return {(p["mode"], p["depth"], p["concurrency"]): p for p in points}


def _per_hop_cpu(p: dict[str, Any]) -> float:
    return float(p["cpu_us_per_req"]) / int(p["depth"])


def _added_per_hop(idx: Index, p: dict[str, Any]) -> float | None:
    """(broker p50 - direct p50) / depth, at the same depth and c; None without the baseline."""
    direct = idx.get(("direct", p["depth"], p["concurrency"]))
    return (p["p50_ms"] - direct["p50_ms"]) / p["depth"] if direct else None


def hop_growth(first: Any, second: Any, before_last: Any, deepest: Any) -> float:
    """How much more CPU per request the last hop of a chain adds than the 2nd (0.1 = 10%)."""
    hop2 = second["cpu_us_per_req"] - first["cpu_us_per_req"]
    hop_last = deepest["cpu_us_per_req"] - before_last["cpu_us_per_req"]
    return float(hop_last / hop2 - 1) if hop2 > 0 else float("inf")


def growth_spread(points: list[dict[str, Any]]) -> str:
    """Each round's own growth (--repeat), e.g. " (-40 to +4% each round alone, 3 rounds)"."""
    growths = [g for g in per_round(points, hop_growth) if g != float("inf")]
    return spread(growths, lambda g: f"{g * 100:+.0f}", "%", " each round alone, {n} rounds")


def _ratio(value: float | None, first: float | None) -> str:
    return f"{value / first:.2f}" if value is not None and first else "-"


def _errors(idx: Index, p: dict[str, Any]) -> int:
    direct = idx.get(("direct", p["depth"], p["concurrency"]), {})
    return sum(int(q.get(k, 0)) for q in (p, direct) for k in ("errors", "chain_failures"))


def _row(idx: Index, p: dict[str, Any]) -> str:
    d, c = p["depth"], p["concurrency"]
    direct = idx.get(("direct", d, c))
    first = idx.get(("broker", 1, c))
    shallower = idx.get(("broker", d - 1, c))
    added, added1 = _added_per_hop(idx, p), _added_per_hop(idx, first) if first else None
    marginal = p["cpu_us_per_req"] - shallower["cpu_us_per_req"] if shallower else None
    scripts = p.get("redis_scripts_per_req")
    foreign = max(p.get("foreign_cores", 0), (direct or {}).get("foreign_cores", 0))
    cells = [
        f"{d}{_KEPT if p.get('origin') else ''}", str(c),
        f"{direct['rps']:,.0f}" if direct else "-", f"{direct['p50_ms']:.2f}" if direct else "-",
        f"{p['rps']:,.0f}", f"{p['p50_ms']:.2f}", f"{p['p99_ms']:.2f}",
        f"{p['cpu_us_per_req']:,.0f}", f"{_per_hop_cpu(p):,.0f}",
        _ratio(_per_hop_cpu(p), _per_hop_cpu(first) if first else None),
        f"{marginal:+,.0f}" if marginal is not None else "-",
        f"{added:+.2f}" if added is not None else "-", _ratio(added, added1),
        f"{scripts / d:.2f}" if scripts is not None else "-",
        str(_errors(idx, p)), f"{foreign:.2f}",
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def _intro(points: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"Agents hop1..hop{HOPS} in one raw-ASGI process (`benchmarks/chain_agent.py`, on the "
        "other core with wrk and Redis); hopK calls hop(K+1) before it answers, so wrk calling "
        f"hop({HOPS + 1}-d) makes a chain of depth d. Through the broker (redis store, the whole "
        "pipeline as in (e), and (e)'s calls budget for every caller, so every hop is metered) "
        "each hop is a mediated `SendMessage`: the agent's own credential, the inbound "
        "`A2A-Delegation` token passed on, one pooled keep-alive aiohttp session. Before the "
        "points one chain of full depth is sent by hand and the broker's log must show its hops "
        "in one task tree, each with the chain so far. The agents do not verify the token (that "
        "is the agent's cost). **Direct** is the same agents calling each other with no broker. "
        "CPU is the broker's process tree only; **per hop** is CPU per request / depth; "
        "**+this hop** is the CPU the d-th hop added over depth d-1; **added p50/hop** is "
        "(broker p50 - direct p50) / depth. Ratios are to depth 1 at the same c. Errors are "
        "wrk's plus onward calls that failed, both modes.",
        "",
        f"The broker's `[limits] upstream_pool_size` is raised from 256 to {POOL_SIZE} here: "
        "every hop of every chain in flight holds one pooled upstream connection (the nest of a "
        "chain of depth d holds d), so c=64 at depth 5 needs 320. With the default 256 that "
        "point completed no request at all: the outer hops hold every connection while waiting "
        "for inner hops that wait for a connection, until the upstream timeout (120 s).",
    ]
    origins = sorted({p["origin"] for p in points if p.get("origin")})
    lines += [f"\nRows marked{_KEPT} are kept from an earlier run: {o}." for o in origins]
    return lines


def chain_section(results: dict[str, Any]) -> list[str]:
    points = results.get("chain_points", [])
    if not points:
        return ["(scenario g not measured in this run: add `--scenarios g`)"]
    idx = _index(points)
    rows = [
        *_intro(points),
        "",
        "| depth | c | direct req/s | direct p50 ms | req/s | p50 ms | p99 ms | CPU µs/req "
        "| CPU µs/hop | vs d=1 | +this hop µs | added p50/hop ms | vs d=1 | EVALSHA/hop "
        "| errors | foreign |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    broker = sorted((p for p in points if p["mode"] == "broker"),
                    key=lambda p: (p["concurrency"], p["depth"]))  # fmt: skip
    rows += [_row(idx, p) for p in broker]
    return [*rows, "", *verdict_lines(idx, broker)]


def verdict_lines(idx: Index, broker: list[dict[str, Any]]) -> list[str]:
    """The target, per concurrency, judged on the hop a chain adds; then the mean per hop.

    "Per-hop cost" is read as what each further hop costs: the first hop only originates a
    task tree (no token to check, no fan-out slot), so the mean per hop drifts from the first
    hop's cost towards a delegated hop's even when no hop gets dearer with depth.
    """
    lines = []
    for c in sorted({p["concurrency"] for p in broker}):
        first, deepest = idx.get(("broker", 1, c)), idx.get(("broker", HOPS, c))
        second, before_last = idx.get(("broker", 2, c)), idx.get(("broker", HOPS - 1, c))
        if not (first and deepest and second and before_last):
            continue
        hop2 = second["cpu_us_per_req"] - first["cpu_us_per_req"]
        hop_last = deepest["cpu_us_per_req"] - before_last["cpu_us_per_req"]
        growth = hop_growth(first, second, before_last, deepest)
        rounds = growth_spread([first, second, before_last, deepest])
        met = "**met**" if abs(growth) <= TARGET_SPREAD else "**not met**"
        mean_growth = _per_hop_cpu(deepest) / _per_hop_cpu(first) - 1
        added, added1 = _added_per_hop(idx, deepest), _added_per_hop(idx, first)
        lat = (f"; added p50 per hop {added1:+.2f} → {added:+.2f} ms ({_ratio(added, added1)}x)"
               if added is not None and added1 is not None else "")  # fmt: skip
        lines.append(
            f"* **Per-hop cost stays constant with depth, c={c}**: {met}. The broker CPU the "
            f"{HOPS}th hop adds to a chain is {hop_last:,.0f} µs against {hop2:,.0f} µs for the "
            f"2nd: {growth:+.0%}{rounds} (target within ±{TARGET_SPREAD:.0%}). The mean per hop, "
            f"which counts the cheaper first hop, goes from {_per_hop_cpu(first):,.0f} µs at "
            f"depth 1 to {_per_hop_cpu(deepest):,.0f} µs at depth {HOPS} ({mean_growth:+.0%}){lat}."
            + _marginal(idx, c)
            + _inflight(deepest)
            + _noisy([p for p in idx.values() if p["concurrency"] == c])
        )
    return lines


def _marginal(idx: Index, c: int) -> str:
    """The first hop (it originates a tree) against the mean of the hops after it."""
    first, deepest = idx.get(("broker", 1, c)), idx.get(("broker", HOPS, c))
    if not first or not deepest:
        return ""
    further = (deepest["cpu_us_per_req"] - first["cpu_us_per_req"]) / (HOPS - 1)
    text = (f" The first hop (it originates the task tree) costs {first['cpu_us_per_req']:,.0f} "
            f"µs; each further hop (it presents a token) {further:,.0f} µs on average")  # fmt: skip
    s1, s5 = first.get("redis_scripts_per_req"), deepest.get("redis_scripts_per_req")
    if s1 is not None and s5 is not None:
        text += f", with {s1:.1f} vs {(s5 - s1) / (HOPS - 1):.1f} Redis scripts (EVALSHA)"
    at2, before_last = idx.get(("broker", 2, c)), idx.get(("broker", HOPS - 1, c))
    if at2 and before_last:
        second = at2["cpu_us_per_req"] - first["cpu_us_per_req"]
        last = deepest["cpu_us_per_req"] - before_last["cpu_us_per_req"]
        text += (f". The hop a chain adds, 2nd against {HOPS}th: {second:,.0f} vs {last:,.0f} "
                 f"µs ({_ratio(last, second)}x)")  # fmt: skip
    return text + "."


def _inflight(p: dict[str, Any]) -> str:
    """A closed-loop point counts the CPU of the c requests still in flight when wrk stops."""
    share = p["concurrency"] / (2 * p["requests"]) if p["requests"] else 0.0
    if share < 0.05:
        return ""
    return (f" Caution: only {p['requests']:,} requests completed in that point with "
            f"{p['concurrency']} in flight at its end, so its CPU per request is inflated by up "
            f"to ~{share:.0%}; use longer points (no `--quick`) for this c.")  # fmt: skip


def _noisy(points: list[dict[str, Any]]) -> str:
    noisy = [p for p in points if p.get("foreign_cores", 0) > NOISY_CORES]
    if not noisy:
        return ""
    return (f" {len(noisy)} of these {len(points)} points (both modes) ran while other work "
            f"used over {NOISY_CORES} cores: read them with care.")  # fmt: skip
