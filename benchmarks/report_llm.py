"""The report's section for scenario (i): the broker's LLM endpoint beside LiteLLM's proxy.

It reads the ``i-*`` points of a run (``benchmarks/scenario_llm.py``), which the unary A2A
table and plot leave out (``without_llm``): their baselines are different.
"""

from __future__ import annotations

from typing import Any

from benchmarks.idle import HALT_NOTE, halts_at_once
from benchmarks.repeat import per_round, spread

THROUGHPUT_TARGET = 20.0  # the broker's req/s over LiteLLM's, at every c, in the same run
TITLES = {
    "i-direct": "(i) direct to the fake provider",
    "i-broker": "(i) broker `/v1/chat/completions`",
    "i-litellm": "(i) LiteLLM proxy",
}
_KEPT = " †"  # as in report.py: a row kept from an earlier run (``--merge``)


def is_llm(point: dict[str, Any]) -> bool:
    return str(point["scenario"]).startswith("i-")


def without_llm(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` without the (i) points, for the tables and plot of A2A calls."""
    return {**results, "points": [p for p in results["points"] if not is_llm(p)]}


def _title(point: dict[str, Any]) -> str:
    name = TITLES.get(point["scenario"], str(point["scenario"]))
    return name + (_KEPT if point.get("origin") else "")


def _peer(points: list[dict[str, Any]], scenario: str, point: dict[str, Any]) -> dict[str, Any]:
    """``scenario``'s measured point at ``point``'s c, from the same run; {} if none."""
    key = (scenario, point["concurrency"], point.get("origin"))
    for p in points:
        if (p["scenario"], p["concurrency"], p.get("origin")) == key and not p.get("unavailable"):
            return p
    return {}


def _method(points: list[dict[str, Any]]) -> str:
    software = next((p.get("software") for p in points if p["scenario"] == "i-litellm"), "")
    return (
        "One OpenAI-compatible chat completion, `POST /v1/chat/completions` with "
        '`{"model":"bench-model","messages":[{"role":"user","content":"hello"}],'
        '"max_tokens":16}`, not streamed, sent by wrk as above. The provider is '
        "`benchmarks/fake_llm.py` (raw ASGI under uvicorn+uvloop+httptools, a fixed answer "
        "with usage), pinned with wrk; direct is wrk straight to it. The broker (memory store, "
        "1 worker) has `[llm.providers.fake]` pointing at it, no policy file, no budgets and "
        "no rate limit; the caller is a registered agent with its broker credential. LiteLLM "
        f"is {software or 'LiteLLM'}, installed by the harness into its own venv, with a "
        "`config.yaml` whose `model_list` maps `bench-model` to `openai/bench-model` at the "
        "same provider, a master key, telemetry and every network fetch switched off. Both "
        "systems run on the sut core, one after the other. Added p50 is over direct at the "
        "same c."
    )


def _rows(points: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| system | c | req/s | p50 ms | p99 ms | +p50 vs direct ms | CPU µs/req | CPU use "
        "| RSS MB | errors | foreign |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in points:
        if p.get("unavailable"):
            rows.append(f"| {_title(p)} | - | unavailable: {p['unavailable']} "
                        "| | | | | | | | |")  # fmt: skip
            continue
        direct = _peer(points, "i-direct", p)
        added = f"{p['p50_ms'] - direct['p50_ms']:+.2f}" if direct else "-"
        rows.append(
            f"| {_title(p)} | {p['concurrency']} | {p['rps']:,.0f} | {p['p50_ms']:.2f} "
            f"| {p['p99_ms']:.2f} | {added} | {p['cpu_us_per_req']:,.0f} "
            f"| {p['cpu_util']:.0%} | {p['rss_mb']:.0f} | {p['errors']} "
            f"| {p.get('foreign_cores', 0):.2f} |"
        )
    return rows


def comparisons(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per c, the broker's point beside LiteLLM's from the same run: ratios and whether each
    half of the target holds."""
    out = []
    for b in points:
        if b["scenario"] != "i-broker" or b.get("unavailable"):
            continue
        lite = _peer(points, "i-litellm", b)
        if not lite:
            continue
        ratio = b["rps"] / lite["rps"] if lite["rps"] else float("inf")
        # LiteLLM answered nothing within the point: its p99 is beyond the point's length (wrk
        # reports 0 for a latency it never saw).
        silent = not lite["rps"] and not lite.get("requests")
        out.append({
            "c": b["concurrency"], "broker": b, "litellm": lite, "ratio": ratio,
            "throughput_met": ratio >= THROUGHPUT_TARGET and not b["errors"],
            "p99_met": silent or b["p99_ms"] < lite["p99_ms"],
        })  # fmt: skip
    return out


def ratio_spread(cmp: dict[str, Any]) -> str:
    """The broker's throughput over LiteLLM's at one c, round by round (--repeat), e.g.
    " (17.8-20.3)"."""
    ratios = per_round([cmp["broker"], cmp["litellm"]], lambda b, lite: b["rps"] / lite["rps"])
    return spread(ratios, "{:.1f}".format, "x", label="")


def verdict(points: list[dict[str, Any]], machine: dict[str, Any] | None = None) -> list[str]:
    """The target, stated met or not met, with the ratios behind it; ``machine`` is the run's
    (its idle policy is named where waits set the pace)."""
    want = (
        f"the broker's LLM endpoint has at least {THROUGHPUT_TARGET:g}x LiteLLM proxy's "
        "throughput and a lower p99, at every c, side by side in the same run"
    )
    pairs = comparisons(points)
    if not pairs:
        gone = [p["unavailable"] for p in points if p.get("unavailable")]
        why = f"LiteLLM was unavailable ({gone[0]})" if gone else "nothing to compare"
        return [f"**Target** ({want}): **not met**: not measured, {why}."]
    rows = [
        "| c | broker req/s | LiteLLM req/s | throughput ratio | broker p99 ms | LiteLLM p99 ms "
        "| p99 ratio (LiteLLM / broker) | met |",
        "|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    waits = _wait_note(pairs, machine or {})
    return [
        _summary(pairs, want), "", *rows, *map(_pair_row, pairs), "", _cpu_note(pairs),
        *(["", waits] if waits else []),
    ]  # fmt: skip


# Below this share of its core the broker was not saturated at that c: waits set its pace.
WAITING_BELOW = 0.9


def _wait_note(pairs: list[dict[str, Any]], machine: dict[str, Any]) -> str | None:
    """Where the throughput half misses while the broker's core had time to spare: say that
    its calls were bound by waits, which wait is the largest (decision 0105), and, on a
    machine whose idle vCPUs halt at once, what each wait costs there (decision 0107)."""
    idle = [
        cmp for cmp in pairs
        if not cmp["throughput_met"] and 0 < cmp["broker"]["cpu_util"] < WAITING_BELOW
    ]  # fmt: skip
    if not idle:
        return None
    shares = "; ".join(
        f"at c={cmp['c']} it used {cmp['broker']['cpu_util']:.0%} of its core, so "
        f"{1 - cmp['broker']['cpu_util']:.0%} of the time a call took was spent waiting"
        for cmp in idle
    )
    return (
        f"Where the ratio falls short, the broker was not saturated: {shares}. The largest "
        "wait in a call is the decision record's fsync, which the audit finishes before the "
        "provider is called. Decision 0105 measures it, and the same endpoint with `[audit] "
        "fsync = false`." + (f" {HALT_NOTE}" if halts_at_once(machine) else "")
    )


def _cpu_note(pairs: list[dict[str, Any]]) -> str:
    """CPU per request side by side: steadier than throughput when the machine is shared (a
    process that needs more CPU per request loses more of its throughput to contention)."""
    parts = [
        f"c={cmp['c']}: {cmp['litellm']['cpu_us_per_req'] / cmp['broker']['cpu_us_per_req']:.1f}x"
        for cmp in pairs
        if cmp["broker"]["cpu_us_per_req"] and cmp["litellm"]["cpu_us_per_req"]
    ]
    return (
        "CPU per request, LiteLLM's over the broker's (steadier than throughput on a shared "
        "machine, where the process that needs more CPU per request loses more of its "
        f"throughput to other work): {', '.join(parts) or 'not measured'}."
    )


def _pair_row(cmp: dict[str, Any]) -> str:
    b, lite = cmp["broker"], cmp["litellm"]
    p99 = f"{lite['p99_ms'] / b['p99_ms']:.1f}x" if b["p99_ms"] else "-"
    ok = cmp["throughput_met"] and cmp["p99_met"]
    return (
        f"| {cmp['c']} | {b['rps']:,.0f} | {lite['rps']:,.0f} | {cmp['ratio']:.1f}x"
        f"{ratio_spread(cmp)} "
        f"| {b['p99_ms']:.2f} | {lite['p99_ms']:.2f} | {p99} | {'met' if ok else '**not met**'} |"
    )


def _summary(pairs: list[dict[str, Any]], want: str) -> str:
    met = all(cmp["throughput_met"] and cmp["p99_met"] for cmp in pairs)
    ratios = ", ".join(f"{cmp['ratio']:.1f}x at c={cmp['c']}" for cmp in pairs)
    lowest = min(cmp["ratio"] for cmp in pairs)
    higher = [str(cmp["c"]) for cmp in pairs if not cmp["p99_met"]]
    p99 = f"not lower at c={', '.join(higher)}" if higher else "lower at every c"
    return (
        f"**Target** ({want}): **{'met' if met else 'not met'}**. Throughput ratio (broker / "
        f"LiteLLM) {ratios}: lowest {lowest:.1f}x against {THROUGHPUT_TARGET:g}x wanted; "
        f"the broker's p99 is {p99}."
    )


def llm_section(results: dict[str, Any]) -> list[str]:
    points = [p for p in results["points"] if is_llm(p)]
    header = ["## LLM endpoint beside LiteLLM's proxy (scenario i)", ""]
    if not points:
        return [*header, "(scenario i not measured in this run: add `--scenarios i`)", ""]
    verdict_lines = verdict(points, results.get("machine"))
    return [*header, _method(points), "", *_rows(points), "", *verdict_lines, ""]
