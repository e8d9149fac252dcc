"""The run records how the machine's CPUs idle, and the report names it where it sets the c=1
figures (decision 0107); benchmarks.halt_polling's reading of its rounds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

# benchmarks/ is not part of the installed package: import it from the checkout
from benchmarks.halt_polling import (
    SPIN_LABELS,
    poll_labels,
    report,
    restored,
    spin_cores,
    spinning,
    usable,
)
from benchmarks.idle import describe, halts_at_once, idle_policy
from benchmarks.measure import Point


def _cpuinfo(root: Path, guest: bool) -> Path:
    path = root / "cpuinfo"
    path.write_text("flags\t\t: fpu sse2" + (" hypervisor" if guest else "") + " lm\n")
    return path


def _sys(root: Path, driver: str | None, poll_ns: str | None) -> Path:
    cpuidle = root / "devices/system/cpu/cpuidle"
    cpuidle.mkdir(parents=True)
    if driver is not None:
        (cpuidle / "current_driver").write_text(driver + "\n")
        (cpuidle / "current_governor").write_text(driver + "\n")
    if poll_ns is not None:
        parameters = root / "module/haltpoll/parameters"
        parameters.mkdir(parents=True)
        (parameters / "guest_halt_poll_ns").write_text(poll_ns + "\n")
    return root


@pytest.mark.parametrize(
    ("driver", "poll_ns", "guest", "at_once"),
    [
        ("haltpoll", "0", True, True),  # the guest's polling switched off: halts at once
        ("haltpoll", "200000", True, False),
        ("none", None, True, True),  # a guest with no cpuidle driver: the kernel's plain HLT
        ("none", None, False, False),  # the same on bare metal: no hypervisor to wake it
        ("intel_idle", None, False, False),
        (None, None, True, False),  # nothing known: nothing claimed
    ],
)
def test_the_idle_policy_is_read_from_sysfs(
    tmp_path: Path, driver: str | None, poll_ns: str | None, guest: bool, at_once: bool
) -> None:
    idle = idle_policy(_sys(tmp_path, driver, poll_ns), _cpuinfo(tmp_path, guest))
    assert idle["guest"] is guest
    assert idle["driver"] == (driver or "")
    assert idle["halt_poll_ns"] == (int(poll_ns) if poll_ns else None)
    assert halts_at_once({"idle": idle}) is at_once


def test_the_machine_line_names_the_policy_and_an_older_run_says_nothing(tmp_path: Path) -> None:
    machine = {"idle": idle_policy(_sys(tmp_path, "haltpoll", "0"), _cpuinfo(tmp_path, True))}
    assert describe(machine) == (
        ", cpuidle driver haltpoll, guest halt polling 0 ns (an idle vCPU halts at once)"
    )
    polling = {"idle": {"driver": "haltpoll", "halt_poll_ns": 200_000}}
    assert describe(polling) == ", cpuidle driver haltpoll, guest halt polling 200,000 ns"
    assert describe({}) == ""  # a run from before the policy was recorded
    # The module loaded under another driver: its window is not used, so not named.
    plain = {"idle": {"driver": "none", "halt_poll_ns": 200_000, "guest": True}}
    assert describe(plain) == ", cpuidle driver none (an idle vCPU halts at once)"
    assert not halts_at_once({})


def test_the_tool_refuses_where_the_parameter_is_missing_and_restores_it(tmp_path: Path) -> None:
    assert "does not exist" in usable(tmp_path / "guest_halt_poll_ns")
    other = _sys(tmp_path / "other", "none", "200000")
    assert "not haltpoll" in usable(other / "module/haltpoll/parameters/guest_halt_poll_ns")
    parameter = _sys(tmp_path, "haltpoll", "0") / "module/haltpoll/parameters/guest_halt_poll_ns"
    assert usable(parameter) == ""
    with pytest.raises(RuntimeError), restored(parameter):
        parameter.write_text("200000")
        raise RuntimeError  # a run that fails half-way
    assert parameter.read_text() == "0"


def _p(name: str, rps: float, p50_ms: float) -> Point:
    return Point(name, 1, rps, p50_ms, p50_ms * 2, 0, int(rps * 3), 400.0, 0.6, 0.2, 100.0, 0, 0)


def test_the_tool_reports_medians_of_paired_rounds() -> None:
    points = {
        "a poll=0": [_p("a", 16_000, 0.06)] * 3,
        "c poll=0": [_p("c", 1_000, 0.90)] * 3,
        "e poll=0": [_p("e", 800, 1.15), _p("e", 820, 1.10), _p("e", 780, 1.20)],
        "i poll=0": [_p("i", 1_500, 0.64)] * 3,
        "a poll=5": [_p("a", 16_000, 0.06)] * 3,
        "c poll=5": [_p("c", 1_250, 0.70)] * 3,
        "e poll=5": [_p("e", 1_100, 0.85), _p("e", 1_066, 0.85), _p("e", 1_092, 0.85)],
        "i poll=5": [_p("i", 2_000, 0.47)] * 3,
    }
    lines = report(points, poll_labels(5))
    assert "| (e) | 5 ns | 1,092 | 0.85 | 400 |" in lines
    assert lines[-3] == (
        "* (c): with polling on, added p50 over (a) -0.20 ms and req/s +25% "
        "(medians of 3 paired rounds)."
    )
    assert lines[-2] == (
        "* (e): with polling on, added p50 over (a) -0.30 ms and req/s +38% "
        "(medians of 3 paired rounds)."
    )
    assert lines[-1] == (
        "* (i): with polling on, p50 -0.17 ms and req/s +33% (medians of 3 paired rounds)."
    )


def test_the_spin_report_names_its_setting() -> None:
    points = {
        "a spin=on": [_p("a", 16_000, 0.05)] * 2,
        "e spin=on": [_p("e", 1_000, 1.00)] * 2,
        "i spin=on": [_p("i", 2_000, 0.50)] * 2,
        "a spin=off": [_p("a", 16_000, 0.06)] * 2,
        "e spin=off": [_p("e", 800, 1.21)] * 2,
        "i spin=off": [_p("i", 1_600, 0.60)] * 2,
    }
    lines = report(points, SPIN_LABELS, "spinners", "with the spinners on")
    assert lines[0].startswith("| c=1 | spinners |")
    assert "| (e) | on | 1,000 | 1.00 | 400 |" in lines
    assert "| (e) | off | 800 | 1.21 | 400 |" in lines
    assert lines[-2] == (
        "* (e): with the spinners on, added p50 over (a) -0.20 ms and req/s +25% "
        "(medians of 2 paired rounds)."
    )


def _scheduling(pid: int) -> tuple[int, set[int]]:
    return os.sched_getscheduler(pid), os.sched_getaffinity(pid)


def test_spinners_idle_class_on_their_cpu_and_gone_however_the_block_ends() -> None:
    core = min(os.sched_getaffinity(0))
    assert spin_cores(f"{core}") == [core]
    assert spin_cores("all") == sorted(os.sched_getaffinity(0))
    with pytest.raises(RuntimeError), spinning([core]) as spinners:
        (spinner,) = spinners
        deadline = time.monotonic() + 10  # the child sets its own class and CPU as it starts
        while _scheduling(spinner.pid) != (os.SCHED_IDLE, {core}) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _scheduling(spinner.pid) == (os.SCHED_IDLE, {core})
        assert spinner.poll() is None
        raise RuntimeError  # a run that fails half-way
    assert spinner.returncode is not None  # killed and reaped
