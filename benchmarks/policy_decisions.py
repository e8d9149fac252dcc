"""What a policy decision costs at 100, 1,000 and 10,000 policy lines, cold and warm.

Run: ``.venv/bin/python benchmarks/policy_decisions.py``. Prints one Markdown table, writes nothing.

Cold = the first question after a policy (re)load: casbin scans the rules (twice when it allows,
to name the allow rule). Warm = the same question again: the engine's per-version cache. A hop
down a chain asks up to three questions (caller, origin, the caller's delegate rule).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from broker.policy import PolicyEngine

MODEL = (Path(__file__).resolve().parents[1] / "policies" / "model.conf").read_text()
SIZES = (100, 1_000, 10_000)
COLD_SAMPLES = 5
WARM_CALLS = 200_000


def synthetic_policy(lines: int) -> str:
    """A policy of exactly ``lines`` rules: 20% role memberships, 10% groups, 70% p rules.

    The rules that answer the benchmark's questions come last, so casbin scans everything.
    """
    g, g2 = lines // 5, lines // 10
    p = lines - g - g2
    roles, groups = max(2, g // 10), max(2, g2 // 5)
    out = ["g, origin, role:r0", "g, caller, role:r1"]
    out += [f"g, agent-{i}, role:r{i % roles}" for i in range(g - 2)]
    out += [f"g2, target-{i}, group:g{i % groups}" for i in range(g2)]
    for i in range(p - 2):
        eft = "deny" if i % 17 == 0 else "allow"
        out.append(f"p, role:r{i % roles}, group:g{i % groups}, SendMessage:skill-{i}, {eft}")
    out += [
        "p, role:r0, group:g0, SendMessage:*, allow",
        "p, role:r1, group:g0, SendMessage:*, allow",
    ]
    assert len(out) == lines
    return "\n".join(out) + "\n"


def per_call_us(call: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


def cold_ms(engine: PolicyEngine, call: Callable[[], object]) -> float:
    samples = []
    for _ in range(COLD_SAMPLES):
        engine.swap(engine.snapshot)  # same policy, empty cache
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def measure(lines: int) -> list[str]:
    engine = PolicyEngine(MODEL)
    text = synthetic_policy(lines)
    start = time.perf_counter()
    snapshot = engine.load_text(text, "synthetic.csv")
    compile_ms = (time.perf_counter() - start) * 1e3
    engine.swap(snapshot)
    target = "target-0"  # in group:g0

    def hop() -> object:
        return engine.decide_chain(["origin", "caller"], target, "SendMessage:x")

    assert hop().allowed  # type: ignore[attr-defined]
    allowed = cold_ms(engine, lambda: engine.verdict("caller", target, "SendMessage:x"))
    no_rule = cold_ms(engine, lambda: engine.verdict("nobody", target, "SendMessage:x"))
    cold_hop = cold_ms(engine, hop)
    hop()
    warm_hop = per_call_us(hop, WARM_CALLS)
    warm_verdict = per_call_us(
        lambda: engine.verdict("caller", target, "SendMessage:x"), WARM_CALLS
    )
    return [
        f"{lines:,}",
        f"{compile_ms:,.0f} ms",
        f"{allowed:,.2f} ms",
        f"{no_rule:,.2f} ms",
        f"{cold_hop:,.2f} ms",
        f"{warm_hop:.2f} µs",
        f"{warm_verdict:.2f} µs",
    ]


def main() -> None:
    header = [
        "policy lines",
        "compile (load_text)",
        "cold verdict, allowed",
        "cold verdict, no rule",
        "cold hop, chain of 2",
        "warm hop (decide_chain)",
        "warm verdict",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" for _ in header) + "|")
    for lines in SIZES:
        print("| " + " | ".join(measure(lines)) + " |", flush=True)


if __name__ == "__main__":
    main()
