"""The audit record: one frozen msgspec Struct, its canonical JSON and its hash.

A record holds only strings, integers, booleans and lists/maps of those: no floats, and integers
within ±(2**53 - 1). Under those rules msgspec's compact sorted-key JSON is exactly RFC 8785 (JCS):
strings are escaped the same way, and keys (record field names and ``detail`` keys, which are
restricted to ASCII) sort the same by code point as by UTF-16 code unit. ``hash`` is
``"sha256:" + hex(SHA-256(canonical JSON of the record without its "hash" member))``.

Secrets, tokens and raw credentials never go into a record; payloads appear only as digests.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, NamedTuple

import msgspec

FORMAT_VERSION: Final = 1
HASH_PREFIX: Final = "sha256:"
_MAX_SAFE_INT: Final = 2**53 - 1

SafeInt = Annotated[int, msgspec.Meta(ge=-_MAX_SAFE_INT, le=_MAX_SAFE_INT)]
Seq = Annotated[int, msgspec.Meta(ge=1, le=_MAX_SAFE_INT)]
DETAIL_KEY_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
DetailValue = str | SafeInt | bool | list[str]
ReplicaId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
REPLICA_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# The record kinds the broker writes. Not enforced on decode: a newer broker's kinds still verify.
KINDS: Final = frozenset({
    "request", "auth.failure", "token.mint", "registry.change", "policy.reload", "policy.error",
    "killswitch", "budget", "approval", "checkpoint", "task.route_conflict",
    "connections", "alert", "alert.ack",
})
CHECKPOINT_KIND: Final = "checkpoint"


class AuditRecordError(ValueError):
    """Fields given for a record have the wrong type or range (a float, an unknown field, ...)."""


class ChainHead(NamedTuple):
    """The last record of a chain: its ``seq`` and ``hash`` (``(0, "")`` for an empty chain)."""

    seq: int
    hash: str


EMPTY_HEAD: Final = ChainHead(0, "")


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
                  omit_defaults=True, dict=True):
    """One audited event. Every member is always written except ``hash`` while it is empty.

    Build records with ``AuditChain.seal`` (which fills ``seq``, ``prev`` and ``hash``) or, for
    tests and tools, ``build_record``; construct directly only from already validated values.
    ``detail`` keys match ``DETAIL_KEY_PATTERN`` and ``replica`` matches ``REPLICA_PATTERN``:
    ``build_record`` and ``decode_record`` check them (a known name costs a set lookup, where a
    pattern in the type cost a regex search per key and record). The instance ``__dict__``
    holds no member: only the stored line that ``with_hash`` made while hashing, so that
    ``encode_record`` need not encode it again.
    """

    # Declared in sorted order: the encoder then writes members as declared (it sorts only
    # dict keys, ``order="deterministic"``), which is the canonical sorted order without a sort
    # per record. A member added out of order would change the bytes: a test keeps this sorted.
    caller: str
    chain: tuple[str, ...]
    cost_micro: SafeInt
    decision: str
    detail: dict[str, DetailValue]
    # Only this member has a default, so omit_defaults drops exactly it while it is "": that
    # encoding is the "record with hash omitted" that the hash covers.
    hash: str = ""
    kind: str
    latency_us: SafeInt
    operation: str
    prev: str
    reason: str
    replica: str  # REPLICA_PATTERN, checked by code as ``detail`` keys are
    request_digest: str
    request_id: str
    response_digest: str
    rule: str
    seq: Seq
    skill: str
    status: SafeInt
    target: str
    tokens_in: SafeInt
    tokens_out: SafeInt
    tree: str
    ts_us: SafeInt
    v: SafeInt


# Defaults for every member a caller may leave out when describing an event.
RECORD_DEFAULTS: Final[Mapping[str, Any]] = {
    "v": FORMAT_VERSION, "request_id": "", "caller": "", "chain": (), "tree": "", "target": "",
    "operation": "", "skill": "", "decision": "", "reason": "", "rule": "", "status": 0,
    "latency_us": 0, "tokens_in": 0, "tokens_out": 0, "cost_micro": 0, "request_digest": "",
    "response_digest": "", "detail": {}, "prev": "",
}

# Members come out in declaration order (sorted, see AuditRecord), ``detail`` keys sorted.
_ENCODER: Final = msgspec.json.Encoder(order="deterministic")
_HASH_MEMBER: Final = b',"hash":"'
_KIND_MEMBER: Final = b',"kind":'
_HASH_PREFIX_MEMBER: Final = _HASH_MEMBER + HASH_PREFIX.encode("ascii")
_LINE: Final = "stored_line"
_DECODER: Final = msgspec.json.Decoder(AuditRecord)


def build_record(fields: Mapping[str, Any], **members: Any) -> AuditRecord:
    """Validate ``fields`` and then ``members`` (which win; ``RECORD_DEFAULTS`` fill in the
    rest) into an unhashed record.

    Raises ``AuditRecordError`` naming the first bad member (a float, a missing ``seq``/``ts_us``/
    ``replica``/``kind``, an unknown member, a ``detail`` key that is not ``[a-z][a-z0-9_.]*``,
    a ``replica`` that does not match ``REPLICA_PATTERN``).
    """
    return _built({**RECORD_DEFAULTS, **fields, **members})


def _built(members: dict[str, Any]) -> AuditRecord:
    try:
        record = msgspec.convert(members, AuditRecord)
        _check_names(record)
    except msgspec.ValidationError as exc:
        raise AuditRecordError(str(exc)) from exc
    return record


# Detail keys and replica ids seen to match their patterns: the broker writes a few dozen
# names, over and over. Bounded, since a key can carry a name the broker was given
# (``error.<metadata key>``).
_GOOD_KEYS: Final[set[str]] = set()
_GOOD_KEYS_MAX: Final = 4096
_GOOD_REPLICAS: Final[set[str]] = set()


def _check_names(record: AuditRecord) -> None:
    """Raise ``msgspec.ValidationError`` for a ``replica`` that does not match
    ``REPLICA_PATTERN`` or a ``detail`` key that does not match ``DETAIL_KEY_PATTERN``
    (each searched as msgspec searches a ``pattern`` constraint)."""
    replica = record.replica
    if replica not in _GOOD_REPLICAS:
        if REPLICA_PATTERN.search(replica) is None:
            raise msgspec.ValidationError(
                f"Expected `str` matching regex {REPLICA_PATTERN.pattern!r} - at `$.replica`"
            )
        if len(_GOOD_REPLICAS) < _GOOD_KEYS_MAX:
            _GOOD_REPLICAS.add(replica)
    _check_detail_keys(record.detail)


def _check_detail_keys(detail: dict[str, Any]) -> None:
    """Raise ``msgspec.ValidationError`` for a key that does not match ``DETAIL_KEY_PATTERN``
    (searched as msgspec searches a ``pattern`` constraint)."""
    if _GOOD_KEYS.issuperset(detail):  # the usual case, checked in C: every key seen before
        return
    for key in detail:
        if key in _GOOD_KEYS:
            continue
        if DETAIL_KEY_PATTERN.search(key) is None:
            raise msgspec.ValidationError(
                f"Expected `str` matching regex {DETAIL_KEY_PATTERN.pattern!r} - at `$.detail`"
            )
        if len(_GOOD_KEYS) < _GOOD_KEYS_MAX:
            _GOOD_KEYS.add(key)


def unhashed_json(record: AuditRecord) -> bytes:
    """The canonical JSON of ``record`` without its ``hash`` member: what the hash covers.

    Raises ``UnicodeEncodeError`` if a string holds a lone surrogate (``with_hash`` repairs those).
    """
    return _ENCODER.encode(msgspec.structs.replace(record, hash="") if record.hash else record)


def record_hash(record: AuditRecord) -> str:
    """``"sha256:<hex>"`` over ``unhashed_json(record)``."""
    return HASH_PREFIX + hashlib.sha256(unhashed_json(record)).hexdigest()


def with_hash(record: AuditRecord) -> AuditRecord:
    """``record`` with ``hash`` set. Lone surrogates (no UTF-8 form) are first made U+FFFD."""
    record, body, hashed = _hashed(record)
    sealed = msgspec.structs.replace(record, hash=hashed)
    sealed.__dict__[_LINE] = _with_hash_member(body, hashed)
    return sealed


def sealed_record(fields: Mapping[str, Any], **members: Any) -> AuditRecord:
    """``with_hash(build_record(fields, **members))``, without the copy that sets the hash:
    the record just built is nobody else's yet, so its hash is set in place.

    Every record the broker writes is sealed here, two per forwarded request, so the steps of
    ``_hashed`` and ``_with_hash_member`` are written out in one function (each call cost about
    as much as the step it wraps)."""
    record = _built({**RECORD_DEFAULTS, **fields, **members})
    if record.hash:  # a caller's own "hash" member is not what the hash covers
        record = msgspec.structs.replace(record, hash="")
    try:
        body = _ENCODER.encode(record)
    except UnicodeEncodeError:
        record = _scrub(record)
        body = _ENCODER.encode(record)
    hexed = hashlib.sha256(body).hexdigest()
    msgspec.structs.force_setattr(record, "hash", HASH_PREFIX + hexed)
    at = body.rfind(_KIND_MEMBER)  # as in ``_with_hash_member``
    record.__dict__[_LINE] = b"".join(
        (body[:at], _HASH_PREFIX_MEMBER, hexed.encode("ascii"), b'"', body[at:])
    )
    return record


def _hashed(record: AuditRecord) -> tuple[AuditRecord, bytes, str]:
    """``record`` (scrubbed of lone surrogates if it held any), the canonical JSON its hash
    covers, and that hash."""
    try:
        body = unhashed_json(record)
    except UnicodeEncodeError:
        record = _scrub(record)
        body = unhashed_json(record)
    return record, body, HASH_PREFIX + hashlib.sha256(body).hexdigest()


def _with_hash_member(body: bytes, hashed: str) -> bytes:
    """The stored line: ``body`` (the unhashed canonical JSON) with ``"hash"`` put in its sorted
    place, just before ``"kind"``. The last ``,"kind":`` is the record's own: the members after
    it are strings and integers (whose quotes are escaped); a ``detail`` key "kind" comes before.
    """
    at = body.rfind(_KIND_MEMBER)
    return b"".join((body[:at], _HASH_MEMBER, hashed.encode("ascii"), b'"', body[at:]))


def encode_record(record: AuditRecord) -> bytes:
    """The record's canonical JSON (RFC 8785), as stored: one line, no trailing newline."""
    line: bytes | None = record.__dict__.get(_LINE)
    return line if line is not None else _ENCODER.encode(record)


def decode_record(line: bytes | str) -> AuditRecord:
    """Parse one stored line. Raises ``msgspec.DecodeError`` (a ``ValueError``) if it is not one."""
    record = _DECODER.decode(line)
    _check_names(record)
    return record


def _fix_text(text: str) -> str:
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _scrub(record: AuditRecord) -> AuditRecord:
    """A copy of ``record`` in which every lone surrogate is replaced by U+FFFD."""
    data = msgspec.to_builtins(record)
    return _built(_scrub_value(data))


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return _fix_text(value)
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    if isinstance(value, dict):
        return {_fix_text(k): _scrub_value(v) for k, v in value.items()}
    return value




class StoredLinks(msgspec.Struct, frozen=True):
    """The members of a stored line that verification reads; the hash covers the rest."""

    seq: int
    prev: str
    hash: str
    replica: str
    kind: str
    detail: msgspec.Raw


_STORED_DECODER: Final = msgspec.json.Decoder(StoredLinks)


def stored_hash(line: bytes) -> str | None:
    """The hash of a stored line: SHA-256 of its bytes without the ``"hash"`` member.

    The broker writes canonical JSON, so this equals ``record_hash`` of the record it holds; a
    line rewritten in any other form no longer matches. The last ``,"hash":"`` is the record's
    own: every member after it in key order is a string or an integer, whose quotes are escaped.
    """
    start = line.rfind(_HASH_MEMBER)
    end = line.find(b'"', start + len(_HASH_MEMBER)) if start >= 0 else -1
    if end < 0:
        return None
    digest = hashlib.sha256(memoryview(line)[:start])
    digest.update(memoryview(line)[end + 1:])
    return HASH_PREFIX + digest.hexdigest()


def decode_links(line: bytes) -> StoredLinks:
    """The chain members of a stored line. Raises ``msgspec.DecodeError`` (``ValidationError``
    if it is JSON but not a record's shape)."""
    return _STORED_DECODER.decode(line)


class KeptCheckpoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A chain head the operator stored outside the broker: ``{"replica", "seq", "hash"}``."""

    replica: ReplicaId
    seq: Annotated[int, msgspec.Meta(ge=0, le=_MAX_SAFE_INT)]
    hash: str
