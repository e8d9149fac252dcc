"""One replica's hash chain: numbers records, links each to the previous, signs checkpoints.

Each broker process (replica) keeps its own chain. A single chain shared by all replicas would
need one global "append after the current head" step, i.e. every request of every replica
serialised on one lock (a Redis round trip or a distributed lock per record); per-replica chains
append without coordination, and ``ts_us`` lets a reader merge them into one timeline.

A checkpoint is an ordinary chained record of kind ``checkpoint`` whose ``detail`` holds
``head_seq``, ``head_hash`` (the record just before it), ``kid`` and ``sig``: the base64url
Ed25519 signature of ``checkpoint_message(replica, head_seq, head_hash)``. Signing checkpoints
rather than records keeps the signature off the hot path (34 µs a signature).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping
from typing import Any

from broker.audit.records import (
    CHECKPOINT_KIND,
    EMPTY_HEAD,
    REPLICA_PATTERN,
    AuditRecord,
    ChainHead,
    sealed_record,
)
from broker.identity.keys import BrokerKeys

CHECKPOINT_DOMAIN = "a2a-broker-audit-checkpoint/v1"


def checkpoint_message(replica: str, head_seq: int, head_hash: str) -> bytes:
    """The exact bytes a checkpoint signature covers."""
    return f"{CHECKPOINT_DOMAIN}|{replica}|{head_seq}|{head_hash}".encode("ascii")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url. Raises ``ValueError`` (binascii.Error) if it is not."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def now_us() -> int:
    return time.time_ns() // 1000


class AuditChain:
    """Seals records for one replica: ``seq`` 1, 2, 3 ... with ``prev`` = the previous ``hash``.

    Not thread-safe; use it from one event loop. Sealing does not write anything: the caller
    appends the sealed records to an ``AuditLog`` in the order they were sealed (``AuditTrail``
    does this). ``checkpoint_every`` records or ``checkpoint_interval_s`` seconds after the last
    checkpoint, whichever comes first, a checkpoint is due.
    """

    def __init__(
        self,
        replica: str,
        keys: BrokerKeys,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 60.0,
        *,
        head: ChainHead = EMPTY_HEAD,
        clock_us: Callable[[], int] = now_us,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not REPLICA_PATTERN.match(replica):
            raise ValueError(f"replica id {replica!r} must match {REPLICA_PATTERN.pattern}")
        if checkpoint_every < 1 or checkpoint_interval_s <= 0:
            raise ValueError("checkpoint_every and checkpoint_interval_s must be positive")
        self.replica = replica
        self._keys = keys
        self._every = checkpoint_every
        self._interval_s = checkpoint_interval_s
        self._clock_us = clock_us
        self._monotonic = monotonic
        self._last_ts_us = 0
        self._last_checkpoint_at = monotonic()
        self.reset(head)

    @property
    def head(self) -> ChainHead:
        """The last sealed record (which may not be durable yet)."""
        return ChainHead(self._seq, self._hash)

    @property
    def unsigned(self) -> int:
        """Records sealed since the last checkpoint."""
        return self._unsigned

    def reset(self, head: ChainHead) -> None:
        """Continue from ``head`` (what the log holds), dropping records sealed after it.

        A stored head counts as unsigned (whether a checkpoint covers it is not known here), so
        the next due checkpoint covers it.
        """
        # Kept as two members: sealing reads them, and a ChainHead per record cost a call.
        self._seq, self._hash = head
        self._unsigned = 1 if head.seq else 0

    def seal(self, fields: Mapping[str, Any]) -> AuditRecord:
        """Number, link and hash one record. ``fields`` omit ``seq``/``prev``/``hash``/``replica``;
        ``ts_us`` defaults to now. Raises ``AuditRecordError`` for invalid fields."""
        record = self._seal(fields)
        self._unsigned += 1
        return record

    def checkpoint_due(self, sealing: int = 0) -> bool:
        """True when records were sealed since the last checkpoint and N or T has been reached
        (counting ``sealing`` records more)."""
        unsigned = self._unsigned + sealing
        if not unsigned:
            return False
        elapsed = self._monotonic() - self._last_checkpoint_at
        return unsigned >= self._every or elapsed >= self._interval_s

    def checkpoint(self) -> AuditRecord:
        """Seal a signed checkpoint covering the current head (even if none is due)."""
        seq, head_hash = self._seq, self._hash
        sig = self._keys.private_key.sign(checkpoint_message(self.replica, seq, head_hash))
        detail = {"head_seq": seq, "head_hash": head_hash, "kid": self._keys.kid,
                  "sig": b64url(sig)}
        record = self._seal({"kind": CHECKPOINT_KIND, "detail": detail})
        self._unsigned = 0
        self._last_checkpoint_at = self._monotonic()
        return record

    def seal_with_checkpoint(self, fields: Mapping[str, Any]) -> list[AuditRecord]:
        """``[seal(fields)]``, followed by a checkpoint when one is due."""
        records = [self.seal(fields)]
        if self.checkpoint_due():
            records.append(self.checkpoint())
        return records

    def _seal(self, fields: Mapping[str, Any]) -> AuditRecord:
        # Timestamps never run backwards within a chain, so merged reading stays ordered.
        ts_us = max(int(fields.get("ts_us", 0)) or self._clock_us(), self._last_ts_us)
        record = sealed_record(
            fields, seq=self._seq + 1, prev=self._hash, replica=self.replica, ts_us=ts_us
        )
        self._seq, self._hash = record.seq, record.hash
        self._last_ts_us = ts_us
        return record
