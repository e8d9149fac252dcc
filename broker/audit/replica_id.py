"""The default name of a broker process's audit chain: the same after every restart.

``[audit] replica`` names the chain when it is set. Otherwise a process takes
``<hostname>-<port>`` (``-2``, ``-3``... for the second and later workers of one broker), so a
restarted broker continues its chain instead of starting a new file or stream each time, as
docs/audit.md asks. Two live processes never share a name: a name is held by an exclusive
``flock`` on a small file in the system's temporary folder for as long as the process runs
(the lock is per host, and so is the hostname in the name; no two brokers on one host listen on
one port). The lock goes with the process, however it ends.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import tempfile
from pathlib import Path

# More workers than this on one port is not a deployment this broker is made for.
MAX_SLOTS = 64
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_LEN = 64
# Held for the life of the process: closing a descriptor would release its name.
_held: list[int] = []


class ReplicaIdError(Exception):
    """No free name: ``MAX_SLOTS`` processes of this broker already run on this host."""


def claim_default_replica(port: int, lock_dir: Path | None = None, host: str = "") -> str:
    """The first of ``<host>-<port>``, ``<host>-<port>-2``... that no live process holds, now
    held by this one. ``host`` defaults to this machine's hostname."""
    base = _base_name(host or socket.gethostname(), port)
    folder = lock_dir or Path(tempfile.gettempdir())
    for slot in range(1, MAX_SLOTS + 1):
        name = base if slot == 1 else f"{base}-{slot}"
        if _hold(folder / f"a2a-broker-replica-{name}.lock"):
            return name
    raise ReplicaIdError(f"{MAX_SLOTS} broker processes already use port {port} on this host")


def _base_name(host: str, port: int) -> str:
    suffix = f"-{port}"
    cleaned = _NOT_ALLOWED.sub("-", host).strip("-.") or "broker"
    room = _MAX_LEN - len(suffix) - len(f"-{MAX_SLOTS}")
    return cleaned[:room] + suffix


def _hold(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except PermissionError:  # another user's broker made it: not ours to take
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _held.append(fd)
    return True
