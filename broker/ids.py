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

# Per id (16 random bytes): the high nibble of byte 6 becomes the version (4), the two high bits
# of byte 8 the RFC 4122 variant (10). Each as a byte table, applied to a whole batch at once.
_VERSION: Final = bytes(byte & 0x0F | 0x40 for byte in range(256))
_VARIANT: Final = bytes(byte & 0x3F | 0x80 for byte in range(256))
_BATCH: Final = 64
_HEX_IDS: Final = tuple(slice(at, at + 32) for at in range(0, 32 * _BATCH, 32))

_ready: list[str] = []  # ids made from random bytes read, not handed out yet


def new_id() -> str:
    """A random version-4 UUID as 32 hex digits, as ``uuid.uuid4().hex`` gives."""
    try:
        return _ready.pop()
    except IndexError:
        _refill()
        return _ready.pop()


def _refill() -> None:
    # No Python-level step per id: the bits are set by ``translate`` on every 16th byte, the
    # batch is hexed once and cut by ready-made slices.
    raw = bytearray(os.urandom(16 * _BATCH))
    raw[6::16] = raw[6::16].translate(_VERSION)
    raw[8::16] = raw[8::16].translate(_VARIANT)
    _ready.extend(map(raw.hex().__getitem__, _HEX_IDS))


os.register_at_fork(after_in_child=_ready.clear)  # never the same ids in two processes
