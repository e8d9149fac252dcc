"""What ``verify`` can find, its exit codes, and how a break in the chain is classified.

A break is seen at a record ``c`` that does not continue the last good record (``head``). The
two records after ``c`` (``n1``, ``n2``; None past the end) tell the alterations apart:

- inserted: skipping ``c`` continues the chain, or ``c`` repeats a record already accepted;
- reordered: ``c`` belongs after ``n1`` (adjacent swap), or nothing continues from it;
- deleted: ``c`` jumps ahead and the chain continues from ``c``;
- edited: ``c`` has the right seq but links to a different record (the one before was altered
  and re-hashed);
- forked: ``c`` repeats an earlier seq, differs from it and has successors of its own.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Protocol

from broker.audit.records import ChainHead


class Finding(enum.StrEnum):
    EDITED = "edited"
    DELETED = "deleted"
    INSERTED = "inserted"
    REORDERED = "reordered"
    TRUNCATED = "truncated"
    FORKED = "forked"
    BAD_SIGNATURE = "bad_signature"
    MALFORMED = "malformed"


EXIT_OK = 0
EXIT_USAGE = 2
# verify --require-witness: every chain verifies, but nothing outside the log vouches for the
# end of at least one (no witness entry, no kept checkpoint).
EXIT_UNVOUCHED = 18
EXIT_CODES: dict[Finding, int] = {
    Finding.EDITED: 10, Finding.DELETED: 11, Finding.INSERTED: 12, Finding.REORDERED: 13,
    Finding.TRUNCATED: 14, Finding.FORKED: 15, Finding.BAD_SIGNATURE: 16, Finding.MALFORMED: 17,
}


class Linked(Protocol):
    """What classification needs of a record (an ``AuditRecord`` has it)."""

    @property
    def seq(self) -> int: ...
    @property
    def prev(self) -> str: ...
    @property
    def hash(self) -> str: ...


class Placed(NamedTuple):
    """A parsed record and the line (1-based) it was read from."""

    line: int
    record: Linked


class Problem(NamedTuple):
    kind: Finding
    seq: int
    line: int
    message: str


def fits(head: ChainHead, record: Linked) -> bool:
    return record.seq == head.seq + 1 and record.prev == head.hash


def _head(record: Linked) -> ChainHead:
    return ChainHead(record.seq, record.hash)


def classify(head: ChainHead, head_prev: str, head_line: int, window: list[Placed]) -> Problem:
    """Name the break at ``window[0]`` after the last good record ``head`` (read at ``head_line``,
    with ``prev`` = ``head_prev``); ``window`` holds up to two following records."""
    c = window[0]
    n1 = window[1].record if len(window) > 1 else None
    n2 = window[2].record if len(window) > 2 else None
    if c.record.seq > head.seq:
        return _ahead(head, c, n1, n2)
    return _behind(head, head_prev, head_line, c, n1)


def _ahead(head: ChainHead, c: Placed, n1: Linked | None, n2: Linked | None) -> Problem:
    seq = c.record.seq
    if n1 is not None and fits(head, n1):
        if fits(_head(n1), c.record) and (n2 is None or fits(_head(c.record), n2)):
            return Problem(Finding.REORDERED, seq, c.line,
                           f"seq {seq} comes before seq {n1.seq}")
        return Problem(Finding.INSERTED, seq, c.line,
                       f"a record claiming seq {seq} was added after seq {head.seq}")
    continues = n1 is None or fits(_head(c.record), n1)
    if seq == head.seq + 1:
        if n1 is not None and continues:
            return Problem(Finding.EDITED, head.seq, c.line - 1,
                           f"seq {head.seq} was altered and re-hashed: seq {seq} no longer "
                           "links to it")
        return Problem(Finding.INSERTED, seq, c.line,
                       f"the record claiming seq {seq} does not link to seq {head.seq}")
    if continues:
        missing = f"{head.seq + 1}" if seq == head.seq + 2 else f"{head.seq + 1}..{seq - 1}"
        return Problem(Finding.DELETED, head.seq + 1, c.line,
                       f"seq {missing} missing: seq {seq} follows seq {head.seq}")
    return Problem(Finding.REORDERED, seq, c.line,
                   f"seq {seq} is out of place: it follows seq {head.seq}")


def _behind(
    head: ChainHead, head_prev: str, head_line: int, c: Placed, n1: Linked | None
) -> Problem:
    seq = c.record.seq
    if seq == head.seq and c.record.hash == head.hash:
        return Problem(Finding.INSERTED, seq, c.line, f"seq {seq} appears twice (same record)")
    if n1 is None or fits(head, n1):
        return Problem(Finding.INSERTED, seq, c.line,
                       f"an extra record claiming seq {seq} follows seq {head.seq}")
    if fits(_head(c.record), n1):
        if seq == head.seq and c.record.prev == head_prev:
            # The record accepted at this seq has no successor, this one has: that one is extra.
            return Problem(Finding.INSERTED, seq, head_line,
                           f"an extra record claiming seq {seq} precedes the real one")
        return Problem(Finding.FORKED, seq, c.line,
                       f"a second, different chain continues from seq {seq}")
    return Problem(Finding.REORDERED, seq, c.line,
                   f"seq {seq} is out of place: it follows seq {head.seq}")
