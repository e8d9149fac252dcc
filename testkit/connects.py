"""Every ``connect()`` the process makes, recorded (for tests that prove nothing left).

One audit hook for the whole test process: hooks cannot be removed, so it is installed once, on
first import, and only appends to a list. ``ConnectLog()`` marks where a test starts reading.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

_CONNECTS: list[Any] = []


def _record_connect(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect":
        _CONNECTS.append(args[1])


sys.addaudithook(_record_connect)


@dataclass
class ConnectLog:
    start: int = field(default_factory=lambda: len(_CONNECTS))

    @property
    def addresses(self) -> list[Any]:
        """The addresses connected to since this log was made."""
        return _CONNECTS[self.start :]
