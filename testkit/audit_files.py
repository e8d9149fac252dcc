"""An audit file's records as a test reads them: the file of a running broker keeps zeros after
its records (decision 0074), so a reader stops at the first NUL byte, as the broker's own do."""

from __future__ import annotations

from pathlib import Path


def audit_bytes(path: Path) -> bytes:
    """The records of an audit file (open or closed), newline-terminated lines."""
    return path.read_bytes().split(b"\0", 1)[0]


def audit_text(path: Path, errors: str = "strict") -> str:
    """``audit_bytes`` as text."""
    return audit_bytes(path).decode("utf-8", errors)
