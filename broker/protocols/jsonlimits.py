"""Cheap structural checks on JSON bytes before they are decoded."""

from __future__ import annotations

import re
from itertools import accumulate

# A JSON string literal, written as an unrolled loop so the regex engine never backtracks.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth_exceeds(body: bytes, max_depth: int) -> bool:
    """True if ``body`` nests arrays/objects deeper than ``max_depth``.

    Exact for valid JSON; for invalid JSON it may err either way, which is harmless because the
    decoder refuses such bodies next. Costs two C-level scans unless the body has more opening
    brackets than ``max_depth`` in total.
    """
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return False
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    steps = (1 if b in b"[{" else -1 for b in brackets)
    return max(accumulate(steps, initial=0)) > max_depth
