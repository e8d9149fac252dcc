"""Random identifiers: request ids, token ids, task trees, reservations.

``new_id()`` is ``uuid.uuid4().hex`` (32 lower-case hex digits, version 4, RFC 4122 variant:
the same form, from the same ``os.urandom``) at under half its cost: several are made per
mediated request, and building a ``UUID`` object for each showed in profiles.
"""

from __future__ import annotations

import os
from typing import Final

# Clear the version and variant bits, then set version 4 and the RFC 4122 variant (10xx).
_KEEP: Final = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_SET: Final = (0x4000 << 64) | (0x8000 << 48)


def new_id() -> str:
    """A random version-4 UUID as 32 hex digits, as ``uuid.uuid4().hex`` gives."""
    return f"{int.from_bytes(os.urandom(16), 'big') & _KEEP | _SET:032x}"
