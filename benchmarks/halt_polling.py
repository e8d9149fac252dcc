"""What this machine's idle policy costs a lone request: the c=1 points of scenario (e) and of
the LLM endpoint (scenario (i)) with the guest's halt polling off and on, alternated (decision
0107).

    .venv/bin/python -m benchmarks.halt_polling [--rounds R] [--seconds S] [--poll-ns N]

On a virtual machine with the ``haltpoll`` cpuidle driver, ``guest_halt_poll_ns`` is how long an
idle vCPU polls for work before it halts (a halted vCPU is woken by the hypervisor). The tool
sets it to 0 and to ``--poll-ns`` in turn, round by round, and measures with the harness's own
parts and placement: direct to the agent (a), the broker on Redis with a calls budget (e), the
broker's LLM endpoint against the fake provider (i), each at c=1 for ``--seconds``. It restores
the parameter's value when it ends, however it ends. It needs the parameter to exist and to be
writable (root on a guest with the haltpoll driver); otherwise it says why and exits 2. It is
not part of ``benchmarks.run``: it changes a kernel setting of the machine it runs on.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks.fake_llm import CHAT_PATH
from benchmarks.measure import UNARY_BODY, UNARY_EXPECT, Conditions, Point, Workload, measure
from benchmarks.scenario_llm import CHAT, broker_llm, fake_provider
from benchmarks.targets import Env, Placement, Target, broker, direct, environment

PARAMETER = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
UNARY = Workload(UNARY_BODY, UNARY_EXPECT)


@contextlib.contextmanager
def restored(parameter: Path) -> Iterator[None]:
    """The parameter's value as found, written back when the block ends."""
    found = parameter.read_text().strip()
    try:
        yield
    finally:
        parameter.write_text(found)


def usable(parameter: Path) -> str:
    """Why the tool cannot run here ("" if it can). ``parameter`` is under a sysfs root
    (``<root>/module/haltpoll/parameters/``), whose cpuidle driver must be haltpoll: under
    another driver the module may be loaded, but its window is not used."""
    if not parameter.exists():
        return f"{parameter} does not exist: not a guest with the haltpoll cpuidle driver"
    driver = parameter.parents[3] / "devices/system/cpu/cpuidle/current_driver"
    name = driver.read_text().strip() if driver.exists() else ""
    if name != "haltpoll":
        return f"the cpuidle driver is {name or 'unknown'}, not haltpoll: {parameter} has no effect"
    try:
        parameter.write_text(parameter.read_text().strip())
    except OSError as exc:
        return f"{parameter} is not writable here ({exc.strerror})"
    return ""


def _one(name: str, target: Target, workload: Workload, seconds: float, env: Env) -> Point:
    conditions = Conditions(env.placement.rest, lambda: list(env.children), 5.0, retries=0)
    with tempfile.TemporaryDirectory() as work:
        return measure(
            name, target=target, workload=workload, concurrencies=(1,), seconds=seconds,
            work_dir=Path(work), conditions=conditions,
        )[0]  # fmt: skip


def run(rounds: int, seconds: float, poll_ns: int, log_dir: Path) -> dict[str, list[Point]]:
    """Each round measures every target with polling off and on, in alternating order."""
    points: dict[str, list[Point]] = {}
    with environment(log_dir, Placement(), 0) as env, fake_provider(env) as provider:
        api_base = provider.url.removesuffix(CHAT_PATH) + "/v1"
        with broker(env, store="redis", metering="budget") as e, broker_llm(env, api_base) as i:
            targets = (("a", direct(env), UNARY), ("e", e, UNARY), ("i", i, CHAT))
            for n in range(rounds):
                settings = (0, poll_ns) if n % 2 == 0 else (poll_ns, 0)
                for value in settings:
                    PARAMETER.write_text(str(value))
                    for name, target, workload in targets:
                        key = f"{name} poll={value}"
                        points.setdefault(key, []).append(_one(key, target, workload, seconds, env))
    return points


def report(points: dict[str, list[Point]], poll_ns: int) -> list[str]:
    """Medians over the rounds, and the medians of the round-by-round differences."""
    lines = [
        "| c=1 | halt polling | req/s (median) | p50 ms (median) | broker CPU µs/req (median) |",
        "|---|--:|--:|--:|--:|",
    ]
    for key, ps in points.items():
        name, value = key.split(" poll=")
        lines.append(
            f"| ({name}) | {int(value):,} ns | {statistics.median(p.rps for p in ps):,.0f} "
            f"| {statistics.median(p.p50_ms for p in ps):.2f} "
            f"| {statistics.median(p.cpu_us_per_req for p in ps):,.0f} |"
        )
    lines.append("")
    off_a, on_a = points["a poll=0"], points[f"a poll={poll_ns}"]
    for name, over_a in (("e", True), ("i", False)):  # (i)'s own direct is not (a)
        off, on = points[f"{name} poll=0"], points[f"{name} poll={poll_ns}"]
        p50 = [
            (p_on.p50_ms - (a_on.p50_ms if over_a else 0))
            - (p_off.p50_ms - (a_off.p50_ms if over_a else 0))
            for p_on, a_on, p_off, a_off in zip(on, on_a, off, off_a, strict=True)
        ]
        rps = [p_on.rps / p_off.rps - 1 for p_on, p_off in zip(on, off, strict=True)]
        what = "added p50 over (a)" if over_a else "p50"
        lines.append(
            f"* ({name}): with polling on, {what} {statistics.median(p50):+.2f} ms "
            f"and req/s {statistics.median(rps):+.0%} (medians of {len(rps)} paired rounds)."
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--poll-ns", type=int, default=200_000)
    args = parser.parse_args()
    why = usable(PARAMETER)
    if why:
        print(f"cannot measure: {why}", file=sys.stderr)
        sys.exit(2)
    with tempfile.TemporaryDirectory() as logs, restored(PARAMETER):
        points = run(args.rounds, args.seconds, args.poll_ns, Path(logs))
    print("\n".join(report(points, args.poll_ns)))


if __name__ == "__main__":
    main()
