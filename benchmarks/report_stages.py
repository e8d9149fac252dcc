"""The report's sections for scenarios (d) and (h) (benchmarks/scenario_stages.py)."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.measure import NOISY_CORES
from benchmarks.scenario_stages import MANY, STAGE_FILLER_LINES

STAGE_TITLES = {
    "d-off": "(d-off) broker, every optional stage off",
    "d-audit": "(d-audit) + audit file, fsync",
    "d-policy": f"(d-policy) + policy, {STAGE_FILLER_LINES:,} filler rules",
    "d-budget": "(d-budget) + calls budget",
    "d-rate": "(d-rate) + budget and rate limit",
    "d-redis": "(d-redis) redis store alone",
    "d-containment": "(d-containment) + circuit breaker and bulkhead",
    "d-datacontrols": "(d-datacontrols) + data controls (request and answer scanned)",
    "d-all": "(d-all) all of them",
    "h-memory-small": "(h) memory, 2 agents, 2 rules",
    "h-memory-10k": "(h) memory, 10k agents, 10k rules",
    "h-redis-small": "(h) redis, 2 agents, 2 rules",
    "h-redis-10k": "(h) redis, 10k agents, 10k rules",
}
ALONE = ("d-audit", "d-policy", "d-budget", "d-redis")  # d-rate includes d-budget
# CPU per request of the large configuration within this share of the small one (mean over c)
# counts as "no growth": single 2 s points on a shared 2-core VM move by ~10% between runs.
SCALE_TOLERANCE = 0.15


def _points(results: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    return [p for p in results["points"] if p["scenario"].startswith(prefix)]


def _same_run(results: dict[str, Any], scenario: str, point: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.report import base

    return base(results, scenario, point) or {}


def _title(point: dict[str, Any]) -> str:
    from benchmarks.report import title

    return title(point)


def _ratio(value: float, base: dict[str, Any], key: str) -> str:
    return f"{value / base[key]:.2f}" if base.get(key) else "-"


def _added(value: float, base: dict[str, Any], key: str, fmt: str) -> str:
    return fmt.format(value - base[key]) if base.get(key) is not None else "-"


def _disturbed(*points: dict[str, Any]) -> bool:
    return any(p.get("foreign_cores", 0) > NOISY_CORES for p in points)


def _mark(point: dict[str, Any], base: dict[str, Any]) -> str:
    """A mark on a difference or ratio one of whose two points other work disturbed."""
    return NOISY if base and _disturbed(point, base) else ""


NOISY = " ?"
NOISY_NOTE = (
    f"`{NOISY.strip()}` marks a difference or ratio where either of its two points saw more than "
    f"{NOISY_CORES} cores of foreign CPU: treat it as noise."
)


def _launch(results: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    for launch in results.get("launches", []):
        if (launch["scenario"], launch.get("origin")) == (point["scenario"], point.get("origin")):
            return dict(launch)
    return {}


def stages_section(results: dict[str, Any]) -> list[str]:
    """(d): each stage alone over the broker with everything optional off."""
    points = _points(results, "d-")
    if not points:
        return ["(scenario d not measured in this run: add `--scenarios d`)"]
    rows = [
        "(d-off) is the broker with everything that can be switched off switched off: memory "
        'store, `[audit] backend = "off"`, no `[policy] policy_file` (everyone may call '
        "everyone), no budget or rate limit, no circuit breaker or bulkhead. Authentication, "
        "parsing, target resolution, the "
        "delegation context, guards, token minting and forwarding always run. Each other row "
        "switches on one thing over that base: the default `[audit]` (file backend, fsync); a "
        f"policy file of the 2 rules the load needs after {STAGE_FILLER_LINES:,} filler rules; "
        "a calls budget for `loadgen` as in (r-ii); that budget plus a rate limit as in "
        "(r-iii); the redis store; the default `[containment]` (a breaker and a bulkhead per "
        "agent, kept in process). (d-all) has all of them. Added figures are over (d-off) at "
        "the same c in the same run. The budget and rate rows meter on the memory store; on "
        "the redis store each check is a Lua script and a round trip (see (r)), which is why "
        "(d-all) costs more than the stages alone add up to. The breaker and bulkhead keep "
        "their state in process (no store round trip); `benchmarks/containment_costs.py` "
        "measures the stage alone. "
        f"{NOISY_NOTE}",
        "",
        "| scenario | c | req/s | vs off | p50 ms | +p50 vs off ms | p99 ms | CPU µs/req "
        "| +CPU µs/req vs off | start s | errors | foreign |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in points:
        off = _same_run(results, "d-off", p)
        mark = _mark(p, off) if p["scenario"] != "d-off" else ""
        start = _launch(results, p).get("start_s")
        rows.append(
            f"| {_title(p)} | {p['concurrency']} | {p['rps']:,.0f} "
            f"| {_ratio(p['rps'], off, 'rps')} "
            f"| {p['p50_ms']:.2f} | {_added(p['p50_ms'], off, 'p50_ms', '{:+.2f}')}{mark} "
            f"| {p['p99_ms']:.2f} | {p['cpu_us_per_req']:,.0f} "
            f"| {_added(p['cpu_us_per_req'], off, 'cpu_us_per_req', '{:+,.0f}')}{mark} "
            f"| {'-' if start is None else f'{start:.1f}'} | {p['errors']} "
            f"| {p.get('foreign_cores', 0):.2f} |"
        )
    return [*rows, "", *_additivity(results, points)]


def _added_cpu(results: dict[str, Any], scenario: str, like: dict[str, Any]) -> float | None:
    point = _same_run(results, scenario, like)
    off = _same_run(results, "d-off", like)
    return point["cpu_us_per_req"] - off["cpu_us_per_req"] if point and off else None


def _additivity(results: dict[str, Any], points: list[dict[str, Any]]) -> list[str]:
    """Whether the stages' costs add up: the sum of each alone against all of them together."""
    lines = []
    for p in points:
        if p["scenario"] != "d-all":
            continue
        stages = ("d-audit", "d-policy", "d-rate", "d-redis", "d-containment")
        measured = [s for s in stages if s != "d-containment" or _same_run(results, s, p)]
        parts = [_added_cpu(results, s, p) for s in measured]
        together = _added_cpu(results, "d-all", p)
        if together is None or any(part is None for part in parts):
            continue
        total = sum(part for part in parts if part is not None)
        named = "audit, policy, budget + rate, redis" + (
            " and containment" if "d-containment" in measured else ""
        )
        lines.append(
            f"* c={p['concurrency']}: {named} alone add "
            f"{total:+,.0f} µs/req between them; all together add {together:+,.0f} µs/req."
        )
    return lines


def scale_section(results: dict[str, Any]) -> list[str]:
    """(h): 10,000 agents and 10,000 policy lines against 2 agents and 2 rules."""
    points = _points(results, "h-")
    if not points:
        return ["(scenario h not measured in this run: add `--scenarios h`)"]
    rows = [
        f"The broker (full pipeline as in (c)/(e): audit file, calls budget, plus a policy "
        f"file) with {MANY:,} more registered agents (declarative cards, each with a "
        f"credential) and {MANY:,} filler policy rules (the shape of "
        "`benchmarks/policy_decisions.py`: role and group lines and allow/deny rules; the 2 "
        "rules the load needs come last), against the same broker with only the 2 agents and "
        "2 rules the load needs, same run. Ratios are large over small at the same c. Start "
        "is from launch to the first `/healthz` answer (Python start-up, loading and checking "
        f"every card, compiling the policy). {NOISY_NOTE}",
        "",
        "| scenario | c | req/s | vs small | p50 ms | vs small | CPU µs/req | vs small "
        "| RSS MB | errors | foreign |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in points:
        small = _same_run(results, _small(p["scenario"]), p)
        mark = "" if p["scenario"].endswith("-small") else _mark(p, small)
        rows.append(
            f"| {_title(p)} | {p['concurrency']} | {p['rps']:,.0f} "
            f"| {_ratio(p['rps'], small, 'rps')}{mark} | {p['p50_ms']:.2f} "
            f"| {_ratio(p['p50_ms'], small, 'p50_ms')}{mark} | {p['cpu_us_per_req']:,.0f} "
            f"| {_ratio(p['cpu_us_per_req'], small, 'cpu_us_per_req')}{mark} | {p['rss_mb']:.0f} "
            f"| {p['errors']} | {p.get('foreign_cores', 0):.2f} |"
        )
    return [*rows, "", *_start_table(results), "", *_scale_verdict(results, points)]


def _small(scenario: str) -> str:
    return scenario.rsplit("-", 1)[0] + "-small"


def _start_table(results: dict[str, Any]) -> list[str]:
    launches = [x for x in results.get("launches", []) if x["scenario"].startswith("h-")]
    rows = [
        "| configuration | agents | policy rules | start s | RSS at start MB |",
        "|---|--:|--:|--:|--:|",
    ]
    for x in launches:
        rows.append(f"| {_title(x)} | {x['agents']:,} | {x['policy_rules']:,} "
                    f"| {x['start_s']:.1f} | {x['rss_start_mb']:.0f} |")  # fmt: skip
    return rows


def _scale_verdict(results: dict[str, Any], points: list[dict[str, Any]]) -> list[str]:
    lines = []
    for store in ("memory", "redis"):
        large = [p for p in points if p["scenario"] == f"h-{store}-10k"]
        pairs = [(p, s) for p in large if (s := _same_run(results, f"h-{store}-small", p))]
        if pairs:
            lines.append(_store_verdict(store, pairs))
    return [
        'Target: "decision cost does not grow with the number of registered agents, and grows '
        'at most logarithmically with policy lines after caching".',
        "",
        *lines,
        "",
        "Both sizes change at once here, so a miss does not say which one grew. The decision "
        "alone, by policy size and without the rest of the broker, is measured by "
        "`benchmarks/policy_decisions.py` (table in docs/policy.md): a warm hop stays under "
        "1 µs from 100 to 10,000 rules (a per-version cache), while a cold one, the first time "
        "a question is asked after a (re)load, scans every rule; the warm-up before each "
        "point pays that here.",
    ]


def _store_verdict(store: str, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """Met if CPU per request, large over small, averages (geometric mean over the c that
    other work left alone) within tolerance; inconclusive if other work disturbed every c.
    A per-request cost that grew with agents or rules would show at every c."""
    ratios = [
        (p["concurrency"], p["cpu_us_per_req"] / s["cpu_us_per_req"], _disturbed(p, s))
        for p, s in pairs
    ]
    quiet = [r for _, r, noisy in ratios if not noisy]
    each = ", ".join(f"c={c}: {r:.2f}{NOISY if noisy else ''}" for c, r, noisy in ratios)
    if quiet:
        mean = statistics.geometric_mean(quiet)
        verdict = "met" if mean <= 1 + SCALE_TOLERANCE else "not met"
        verdict += f"** (mean {mean:.2f} over {len(quiet)} undisturbed c)"
    else:
        verdict = "inconclusive** (other work disturbed every c)"
    return (
        f"* **{store} store: {verdict}. CPU per request with {MANY:,} agents and {MANY:,} "
        f"rules over 2 and 2: {each}. Met if the mean is at most {1 + SCALE_TOLERANCE:.2f}: "
        "a single 2 s point here moves by about 10% between runs."
    )
