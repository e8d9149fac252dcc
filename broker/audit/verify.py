"""Verify one replica's chain in one streaming pass: hashes, links, seq, checkpoint signatures.

``verify_chain`` reads stored lines (bytes, as written) or records and reports the first
problem: where (seq and line) and how (a ``Finding``) the log was altered. Memory stays
constant: beyond the last good record it holds at most the two records that classify a break.

What it can prove, and its limits: every record up to the last valid checkpoint is exactly as
the broker wrote it (altering one changes hashes up to the signed checkpoint, which only the
broker's key can re-sign). Records after the last checkpoint are protected by the hash chain
alone: someone able to rewrite the file could rewrite or cut that tail consistently. A
checkpoint the operator keeps elsewhere (``KeptCheckpoint``) closes that gap up to its seq.
"""

from __future__ import annotations

import binascii
from collections.abc import AsyncIterable, Iterable, Mapping
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.audit.chain import b64url_decode, checkpoint_message
from broker.audit.findings import EXIT_CODES, EXIT_OK, Finding, Placed, Problem, classify, fits
from broker.audit.records import (
    CHECKPOINT_KIND,
    EMPTY_HEAD,
    AuditRecord,
    ChainHead,
    KeptCheckpoint,
    StoredLinks,
    decode_links,
    record_hash,
    stored_hash,
)

_JSON = msgspec.json.Decoder()
class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome: ``ok`` or the first problem (``kind``, ``seq``, ``line``, ``message``)."""

    ok: bool
    replica: str
    lines: int
    last_seq: int
    last_hash: str
    checkpoints: int
    signed_seq: int  # every record up to here is covered by a valid checkpoint
    kind: str = ""
    seq: int = 0
    line: int = 0
    message: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_CODES[Finding(self.kind)]


class ChainVerifier:
    """Feed stored lines (or records) in order, then call ``finish``.

    ``newline_terminated``: lines come from a file with their newline kept, so a last line
    without one is a torn (truncated) write rather than a malformed record.
    """

    def __init__(
        self,
        public_keys: Mapping[str, Ed25519PublicKey],
        expected: KeptCheckpoint | None = None,
        *,
        newline_terminated: bool = False,
    ) -> None:
        self._keys = public_keys
        self._expected = expected
        self._newline = newline_terminated
        self._replica = expected.replica if expected else ""
        self._line = 0
        self._head = EMPTY_HEAD
        self._head_prev = ""
        self._head_line = 0
        self._checkpoints = 0
        self._signed_seq = 0
        self._window: list[Placed] = []
        self._torn = False
        # A record that fails its own hash: edited in place, or inserted? The next record
        # tells (it continues from the last good one only if this one was extra).
        self._suspect: Problem | None = None
        self.problem: Problem | None = None

    def feed(self, item: bytes | str | AuditRecord) -> bool:
        """Check the next line; True once a problem is known (feeding more changes nothing)."""
        if self.problem is not None:
            return True
        self._line += 1
        if self._torn:  # a line followed the unterminated one: it was not a torn tail
            self._torn = False
            self._set(Finding.MALFORMED, 0, self._line - 1, "a line has no newline")
            return True
        record = self._parse(item)
        if record is None:
            if self.problem is not None and self._suspect is not None:
                self.problem = self._suspect  # the earlier doubt is the first problem
            elif self.problem is not None and self._window:
                self.problem = self._classify()  # the earlier break is the first problem
            return self.problem is not None
        if self._suspect is not None:
            self._judge_suspect(record)
            return True
        if self._window:
            self._window.append(Placed(self._line, record))
            if len(self._window) == 3:
                self.problem = self._classify()
        elif fits(self._head, record):
            self._accept(record)
        else:
            self._window.append(Placed(self._line, record))
        return self.problem is not None

    def finish(self) -> VerifyReport:
        """The report once every line has been fed."""
        if self.problem is None and self._suspect is not None:
            self.problem = self._suspect  # nothing follows to show the chain skips it
        if self.problem is None and self._window:
            self.problem = self._classify()
        if self.problem is None and self._torn:
            self._set(Finding.TRUNCATED, self._head.seq + 1, self._line,
                      "the last line is incomplete (cut off, or torn by a crash)")
        expected = self._expected
        if self.problem is None and expected and self._head.seq < expected.seq:
            self._set(Finding.TRUNCATED, self._head.seq + 1, self._line + 1,
                      f"the log ends at seq {self._head.seq}; the kept checkpoint is at seq "
                      f"{expected.seq}")
        return self._report()

    def _report(self) -> VerifyReport:
        kind, seq, line, message = self.problem or (None, 0, 0, "")
        return VerifyReport(
            ok=kind is None, replica=self._replica, lines=self._line, last_seq=self._head.seq,
            last_hash=self._head.hash, checkpoints=self._checkpoints,
            signed_seq=self._signed_seq, kind=kind.value if kind else "", seq=seq, line=line,
            message=message,
        )

    def _set(self, kind: Finding, seq: int, line: int, message: str) -> None:
        if self.problem is None:
            self.problem = Problem(kind, seq, line, message)

    def _doubt(self, problem: Problem) -> None:
        """A record fails its hash. Decide at once if a break is already being classified (or
        this is the second doubt in a row); otherwise wait for the next record."""
        if self._suspect is not None:
            self.problem = self._suspect
        elif self._window:
            self._set(*problem)
        else:
            self._suspect = problem

    def _judge_suspect(self, record: StoredLinks | AuditRecord) -> None:
        suspect, self._suspect = self._suspect, None
        assert suspect is not None  # noqa: S101 - only called with one
        if fits(self._head, record):  # the chain goes on across it: it was never part of it
            self._set(Finding.INSERTED, suspect.seq, suspect.line,
                      f"an extra record claiming seq {suspect.seq}, whose hash does not match "
                      f"its content, was inserted after seq {self._head.seq}")
        else:
            self.problem = suspect

    def _classify(self) -> Problem:
        return classify(self._head, self._head_prev, self._head_line, self._window)

    def _parse(self, item: bytes | str | AuditRecord) -> StoredLinks | AuditRecord | None:
        if isinstance(item, AuditRecord):
            record: StoredLinks | AuditRecord = item
            try:
                intact = record_hash(item) == item.hash
            except UnicodeEncodeError:
                intact = False
        else:
            if isinstance(item, str):
                item = item.encode("utf-8", "surrogateescape")
            line = item[:-1] if item.endswith(b"\n") else item
            stored = self._decode(line, terminated=line is not item)
            if stored is None:
                return None
            record, intact = stored, stored_hash(line) == stored.hash
        if not intact:
            self._doubt(Problem(Finding.EDITED, record.seq, self._line, f"seq {record.seq} was "
                                "altered (its content does not match its hash)"))
            return None
        if not self._replica:
            self._replica = record.replica
        if record.replica != self._replica:
            self._set(Finding.INSERTED, record.seq, self._line,
                      f"a record of replica {record.replica!r} is in this chain")
            return None
        return record

    def _decode(self, line: bytes, *, terminated: bool) -> StoredLinks | None:
        try:
            return decode_links(line)
        except msgspec.ValidationError:
            claimed = self._claimed(line)
            if claimed is None:
                self._set(Finding.MALFORMED, self._head.seq + 1, self._line,
                          f"line {self._line} is not a record")
            else:
                self._doubt(Problem(Finding.EDITED, claimed, self._line, f"the record at line "
                                    f"{self._line} was altered (no longer a valid record)"))
        except msgspec.DecodeError:
            if self._newline and not terminated:
                self._torn = True  # a torn tail if nothing follows, see feed/finish
                return None
            self._set(Finding.MALFORMED, self._head.seq + 1, self._line,
                      f"line {self._line} is not JSON")
        return None

    def _claimed(self, line: bytes) -> int | None:
        """The seq a JSON object claims (0 if none), or None if the line is no JSON object."""
        value = _JSON.decode(line)
        if not isinstance(value, dict):
            return None
        seq = value.get("seq")
        return seq if isinstance(seq, int) else 0

    def _accept(self, record: StoredLinks | AuditRecord) -> None:
        if record.kind == CHECKPOINT_KIND and not self._check_signature(record):
            return
        expected = self._expected
        if expected and record.seq == expected.seq and record.hash != expected.hash:
            self._set(Finding.TRUNCATED, record.seq, self._line,
                      f"seq {record.seq} differs from the kept checkpoint: the log was cut and "
                      "rewritten from there")
            return
        self._head_prev = record.prev
        self._head = ChainHead(record.seq, record.hash)
        self._head_line = self._line

    def _check_signature(self, record: StoredLinks | AuditRecord) -> bool:
        detail = _detail(record)
        why = ""
        key = self._keys.get(str(detail.get("kid")))
        if detail.get("head_seq") != record.seq - 1 or detail.get("head_hash") != record.prev:
            why = "it does not cover the record before it"
        elif key is None:
            why = f"its key {detail.get('kid')!r} is not among the trusted keys"
        elif not _signature_valid(key, record.replica, record.seq - 1, detail):
            why = "its signature does not verify"
        if why:
            self._set(Finding.BAD_SIGNATURE, record.seq, self._line,
                      f"checkpoint seq {record.seq}: {why}")
            return False
        self._checkpoints += 1
        self._signed_seq = record.seq - 1
        return True


def _detail(record: StoredLinks | AuditRecord) -> dict[str, Any]:
    if isinstance(record, AuditRecord):
        return dict(record.detail)
    try:
        detail = _JSON.decode(record.detail)
    except msgspec.DecodeError:
        return {}
    return detail if isinstance(detail, dict) else {}


def _signature_valid(
    key: Ed25519PublicKey, replica: str, head_seq: int, detail: dict[str, Any]
) -> bool:
    sig, head_hash = detail.get("sig"), detail.get("head_hash")
    if not isinstance(sig, str) or not isinstance(head_hash, str) or not head_hash.isascii():
        return False
    try:
        key.verify(b64url_decode(sig), checkpoint_message(replica, head_seq, head_hash))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def verify_chain(
    records: Iterable[bytes | str | AuditRecord],
    public_keys: Mapping[str, Ed25519PublicKey],
    expected: KeptCheckpoint | None = None,
    *,
    newline_terminated: bool = False,
) -> VerifyReport:
    """Verify one replica's chain, stopping at the first problem. See ``ChainVerifier``."""
    verifier = ChainVerifier(public_keys, expected, newline_terminated=newline_terminated)
    for item in records:
        if verifier.feed(item):
            break
    return verifier.finish()


async def averify_chain(
    records: AsyncIterable[bytes | AuditRecord],
    public_keys: Mapping[str, Ed25519PublicKey],
    expected: KeptCheckpoint | None = None,
) -> VerifyReport:
    """``verify_chain`` over an async source (e.g. ``AuditLog.read_raw``)."""
    verifier = ChainVerifier(public_keys, expected)
    async for item in records:
        if verifier.feed(item):
            break
    return verifier.finish()
