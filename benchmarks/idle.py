"""How the machine's CPUs idle, which sets what a wait costs at low concurrency (decision 0107).

On a virtual machine whose idle vCPU halts at once (no guest halt polling), every wait of a lone
request (the audit's fsync, a Redis round trip, the agent, the next request) ends in the
hypervisor waking a halted vCPU, and the request's own code then runs slower too. The run
records the policy it measured under, and the report says so beside the c=1 rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Said beside a c=1 figure measured on a machine whose idle vCPUs halt at once.
HALT_NOTE = (
    "On this machine an idle vCPU halts at once (no guest halt polling), so each wait of a lone "
    "request ends in the hypervisor waking it. Decision 0107 measures the same code with the "
    "guest's halt polling on."
)


def idle_policy(sys_root: Path = Path("/sys")) -> dict[str, Any]:
    """The cpuidle driver and governor ("" where the kernel has none), and the guest halt
    polling window in ns (None where the haltpoll module is not loaded)."""
    cpuidle = sys_root / "devices/system/cpu/cpuidle"
    poll = _read(sys_root / "module/haltpoll/parameters/guest_halt_poll_ns")
    return {
        "driver": _read(cpuidle / "current_driver"),
        "governor": _read(cpuidle / "current_governor") or _read(cpuidle / "current_governor_ro"),
        "halt_poll_ns": int(poll) if poll.isdigit() else None,
    }


def halts_at_once(machine: dict[str, Any]) -> bool:
    """An idle vCPU of this run's machine halts without polling first: the haltpoll driver
    with a window of 0 ns, or no cpuidle driver at all (the kernel's plain HLT)."""
    idle = machine.get("idle") or {}
    driver = idle.get("driver")
    return driver == "none" or (driver == "haltpoll" and idle.get("halt_poll_ns") == 0)


def describe(machine: dict[str, Any]) -> str:
    """The machine line's words on idling ("" for a run that did not record it)."""
    idle = machine.get("idle")
    if not idle or not idle.get("driver"):
        return ""
    poll = idle.get("halt_poll_ns")
    polling = f", guest halt polling {poll:,} ns" if poll is not None else ""
    at_once = " (an idle vCPU halts at once)" if halts_at_once(machine) else ""
    return f", cpuidle driver {idle['driver']}{polling}{at_once}"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
