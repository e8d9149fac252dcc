"""What this machine's idle policy costs a lone request: the c=1 points of scenarios (c) and
(e) and of the LLM endpoint (scenario (i)) with the guest's halt polling off and on, alternated
(decision 0107).

    .venv/bin/python -m benchmarks.halt_polling [--rounds R] [--seconds S] [--poll-ns N]
    .venv/bin/python -m benchmarks.halt_polling --spin [CORES] [--rounds R] [--seconds S]

On a virtual machine with the ``haltpoll`` cpuidle driver, ``guest_halt_poll_ns`` is how long an
idle vCPU polls for work before it halts (a halted vCPU is woken by the hypervisor). The tool
sets it to 0 and to ``--poll-ns`` in turn, round by round, and measures with the harness's own
parts and placement: direct to the agent (a), the broker with a calls budget on the memory
store (c) and on Redis (e), the broker's LLM endpoint against the fake provider (i), each at c=1
for ``--seconds``. It restores the parameter's value when it ends, however it ends. It needs the
parameter to exist and to be writable (root on a guest with the haltpoll driver); otherwise it
says why and exits 2. It is not part of ``benchmarks.run``: it changes a kernel setting of the
machine it runs on.

``--spin`` needs neither the driver nor root: in turn with no spinner, it runs one busy loop at
``SCHED_IDLE`` pinned to each of ``CORES`` (default: every CPU the tool may use). A
``SCHED_IDLE`` loop runs only when nothing else wants its CPU, so that CPU never idles and never
halts: an upper bound on what polling in the idle loop could give, on any host. The spinners'
CPU is counted as the run's own, not as other work, and is not charged to the broker.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from benchmarks.fake_llm import CHAT_PATH
from benchmarks.measure import UNARY_BODY, UNARY_EXPECT, Conditions, Point, Workload, measure
from benchmarks.scenario_llm import CHAT, broker_llm, fake_provider
from benchmarks.targets import Env, Placement, Target, broker, direct, environment

PARAMETER = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
UNARY = Workload(UNARY_BODY, UNARY_EXPECT)
# A busy loop that runs only when its CPU would otherwise idle (argv[1]: the CPU to pin it to).
SPINNER = (
    "import os, sys\n"
    "os.sched_setaffinity(0, {int(sys.argv[1])})\n"
    "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
    "while True:\n"
    "    pass\n"
)
# One setting of a pair compared round by round: its label ("poll=0", "spin=on") and what holds
# it while that setting's points are taken (with the processes whose CPU is the run's own).
Setting = tuple[str, Callable[[], AbstractContextManager[list[subprocess.Popen[bytes]]]]]


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


@contextlib.contextmanager
def polling(parameter: Path, value: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The guest's halt polling window set to ``value`` ns (``restored`` puts the found value
    back once the run ends)."""
    parameter.write_text(str(value))
    yield []


@contextlib.contextmanager
def spinning(cores: list[int]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """A ``SCHED_IDLE`` busy loop pinned to each of ``cores`` while the block runs: they take
    only time those CPUs would idle, so none of them halts. Stopped however the block ends."""
    spinners: list[subprocess.Popen[bytes]] = []
    try:
        for core in cores:
            argv = [sys.executable, "-c", SPINNER, str(core)]
            spinners.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL))
        yield spinners
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def _one(
    name: str,
    target: Target,
    workload: Workload,
    seconds: float,
    env: Env,
    *,
    ours: list[subprocess.Popen[bytes]],
) -> Point:
    children = lambda: [*env.children, *ours]  # noqa: E731  # spinners are the run's own
    conditions = Conditions(env.placement.rest, children, 5.0, retries=0)
    with tempfile.TemporaryDirectory() as work:
        return measure(
            name, target=target, workload=workload, concurrencies=(1,), seconds=seconds,
            work_dir=Path(work), conditions=conditions,
        )[0]  # fmt: skip


def run(
    rounds: int, seconds: float, settings: tuple[Setting, Setting], log_dir: Path
) -> dict[str, list[Point]]:
    """Each round measures every target under both settings (off, then on), in alternating
    order; points keyed "<target> <label>"."""
    points: dict[str, list[Point]] = {}
    with environment(log_dir, Placement(), 0) as env, fake_provider(env) as provider:
        api_base = provider.url.removesuffix(CHAT_PATH) + "/v1"
        with (
            broker(env, store="memory", metering="budget") as c,
            broker(env, store="redis", metering="budget") as e,
            broker_llm(env, api_base) as i,
        ):
            targets = (("a", direct(env), UNARY), ("c", c, UNARY), ("e", e, UNARY), ("i", i, CHAT))
            for n in range(rounds):
                for label, held in settings if n % 2 == 0 else settings[::-1]:
                    with held() as ours:
                        for name, target, workload in targets:
                            key = f"{name} {label}"
                            point = _one(key, target, workload, seconds, env, ours=ours)
                            points.setdefault(key, []).append(point)
    return points


Labels = tuple[tuple[str, str], tuple[str, str]]  # (key label, as the table shows it): off, on
SPIN_LABELS: Labels = (("spin=off", "off"), ("spin=on", "on"))


def poll_labels(poll_ns: int) -> Labels:
    return ("poll=0", "0 ns"), (f"poll={poll_ns}", f"{poll_ns:,} ns")


def report(
    points: dict[str, list[Point]],
    labels: Labels,
    column: str = "halt polling",
    change: str = "with polling on",
) -> list[str]:
    """Medians over the rounds, and the medians of the round-by-round differences."""
    lines = [
        f"| c=1 | {column} | req/s (median) | p50 ms (median) | broker CPU µs/req (median) |",
        "|---|--:|--:|--:|--:|",
    ]
    shown = dict(labels)
    for key, ps in points.items():
        name, label = key.split(" ", 1)
        lines.append(
            f"| ({name}) | {shown[label]} | {statistics.median(p.rps for p in ps):,.0f} "
            f"| {statistics.median(p.p50_ms for p in ps):.2f} "
            f"| {statistics.median(p.cpu_us_per_req for p in ps):,.0f} |"
        )
    lines.append("")
    (off_label, _), (on_label, _) = labels
    off_a, on_a = points[f"a {off_label}"], points[f"a {on_label}"]
    for name, over_a in (("c", True), ("e", True), ("i", False)):  # (i)'s own direct is not (a)
        if f"{name} {off_label}" not in points:  # a run without it
            continue
        off, on = points[f"{name} {off_label}"], points[f"{name} {on_label}"]
        p50 = [
            (p_on.p50_ms - (a_on.p50_ms if over_a else 0))
            - (p_off.p50_ms - (a_off.p50_ms if over_a else 0))
            for p_on, a_on, p_off, a_off in zip(on, on_a, off, off_a, strict=True)
        ]
        rps = [p_on.rps / p_off.rps - 1 for p_on, p_off in zip(on, off, strict=True)]
        what = "added p50 over (a)" if over_a else "p50"
        lines.append(
            f"* ({name}): {change}, {what} {statistics.median(p50):+.2f} ms "
            f"and req/s {statistics.median(rps):+.0%} (medians of {len(rps)} paired rounds)."
        )
    return lines


def spin_cores(text: str) -> list[int]:
    """``--spin``'s CPUs: "all" (every CPU this process may run on) or a list like "0,1"."""
    if text == "all":
        return sorted(os.sched_getaffinity(0))
    return [int(core) for core in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--poll-ns", type=int, default=200_000)
    parser.add_argument(
        "--spin", nargs="?", const="all", metavar="CORES",
        help="compare SCHED_IDLE spinners on these CPUs (default all) with none, not polling",
    )  # fmt: skip
    args = parser.parse_args()
    if args.spin is not None:
        cores = spin_cores(args.spin)
        settings: tuple[Setting, Setting] = (
            (SPIN_LABELS[0][0], lambda: contextlib.nullcontext([])),
            (SPIN_LABELS[1][0], lambda: spinning(cores)),
        )
        with tempfile.TemporaryDirectory() as logs:
            points = run(args.rounds, args.seconds, settings, Path(logs))
        column = f"SCHED_IDLE spinners on CPUs {','.join(map(str, cores))}"
        print("\n".join(report(points, SPIN_LABELS, column, "with the spinners on")))
        return
    why = usable(PARAMETER)
    if why:
        print(f"cannot measure: {why}", file=sys.stderr)
        sys.exit(2)
    labels = poll_labels(args.poll_ns)
    settings = (
        (labels[0][0], lambda: polling(PARAMETER, 0)),
        (labels[1][0], lambda: polling(PARAMETER, args.poll_ns)),
    )
    with tempfile.TemporaryDirectory() as logs, restored(PARAMETER):
        points = run(args.rounds, args.seconds, settings, Path(logs))
    print("\n".join(report(points, labels)))


if __name__ == "__main__":
    main()
