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


def idle_policy(
    sys_root: Path = Path("/sys"), cpuinfo: Path = Path("/proc/cpuinfo")
) -> dict[str, Any]:
    """The cpuidle driver and governor ("" where the kernel has none), the guest halt polling
    window in ns (None where the haltpoll module is not loaded), and whether the CPUs are
    virtual (the ``hypervisor`` flag)."""
    cpuidle = sys_root / "devices/system/cpu/cpuidle"
    poll = _read(sys_root / "module/haltpoll/parameters/guest_halt_poll_ns")
    flags = next((line for line in _read(cpuinfo).splitlines() if line.startswith("flags")), "")
    return {
        "driver": _read(cpuidle / "current_driver"),
        "governor": _read(cpuidle / "current_governor") or _read(cpuidle / "current_governor_ro"),
        "halt_poll_ns": int(poll) if poll.isdigit() else None,
        "guest": "hypervisor" in flags.split(),
    }


def halts_at_once(machine: dict[str, Any]) -> bool:
    """An idle vCPU of this run's machine halts without polling first, so the hypervisor must
    wake it: the haltpoll driver with a window of 0 ns, or a guest with no cpuidle driver at all
    (the kernel's plain HLT; on bare metal that is no VM exit, and nothing is claimed)."""
    idle = machine.get("idle") or {}
    driver = idle.get("driver")
    plain_hlt = driver == "none" and idle.get("guest") is True
    return plain_hlt or (driver == "haltpoll" and idle.get("halt_poll_ns") == 0)


def describe(machine: dict[str, Any]) -> str:
    """The machine line's words on idling ("" for a run that did not record it)."""
    idle = machine.get("idle")
    if not idle or not idle.get("driver"):
        return ""
    poll = idle.get("halt_poll_ns")
    # The window is the haltpoll driver's: under another driver it is not used.
    used = poll is not None and idle["driver"] == "haltpoll"
    polling = f", guest halt polling {poll:,} ns" if used else ""
    at_once = " (an idle vCPU halts at once)" if halts_at_once(machine) else ""
    return f", cpuidle driver {idle['driver']}{polling}{at_once}"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
