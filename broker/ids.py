"""Random identifiers: request ids, token ids, task trees, reservations.

``new_id()`` is ``uuid.uuid4().hex`` (32 lower-case hex digits, version 4, RFC 4122 variant:
the same form, from the same ``os.urandom``) at under a third of its cost: several are made per
mediated request (its id, its token's id and tree), and building a ``UUID`` object for each,
then one ``getrandom`` system call for each, showed in profiles. The random bytes are read for
``_BATCH`` ids at a time; a forked child starts with none of its parent's.
"""

from __future__ import annotations

import os
from typing import Final

# Clear the version and variant bits, then set version 4 and the RFC 4122 variant (10xx).
_KEEP: Final = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_SET: Final = (0x4000 << 64) | (0x8000 << 48)
_BATCH: Final = 64

_ready: list[str] = []  # ids made from random bytes read, not handed out yet


def new_id() -> str:
    """A random version-4 UUID as 32 hex digits, as ``uuid.uuid4().hex`` gives."""
    try:
        return _ready.pop()
    except IndexError:
        _refill()
        return _ready.pop()


def _refill() -> None:
    raw = os.urandom(16 * _BATCH)
    _ready.extend(
        f"{int.from_bytes(raw[at : at + 16], 'big') & _KEEP | _SET:032x}"
        for at in range(0, len(raw), 16)
    )


os.register_at_fork(after_in_child=_ready.clear)  # never the same ids in two processes
