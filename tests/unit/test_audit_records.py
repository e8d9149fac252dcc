"""Audit records: what a record may hold, and its hash."""

from __future__ import annotations

import msgspec
import pytest

from broker.audit.records import (
    AuditRecord,
    AuditRecordError,
    build_record,
    decode_record,
    encode_record,
    record_hash,
    sealed_record,
    with_hash,
)

BASE = {"seq": 1, "ts_us": 1, "replica": "r1", "kind": "request"}


def test_every_member_is_written_and_hash_covers_all_but_itself() -> None:
    record = with_hash(build_record(BASE))
    stored = msgspec.json.decode(encode_record(record))
    assert set(stored) == set(record.__struct_fields__)
    assert record.hash == record_hash(record)
    assert record.hash.startswith("sha256:") and len(record.hash) == 7 + 64
    assert decode_record(encode_record(record)) == record


def test_members_are_declared_in_the_order_they_are_stored() -> None:
    # The encoder writes members as declared and sorts only ``detail`` keys: a member declared
    # out of order would change every stored line and hash.
    names = list(AuditRecord.__struct_fields__)
    assert names == sorted(names)
    assert list(msgspec.json.decode(encode_record(with_hash(build_record(BASE))))) == names


@pytest.mark.parametrize(
    "fields",
    [
        {"latency_us": 1.5},  # no floats, anywhere
        {"status": 2**53},  # beyond what a JSON number holds exactly
        {"detail": {"Bad Key": "x"}},  # detail keys are lower-case ASCII names
        {"detail": {"nested": {"a": 1}}},  # detail values are flat
        {"detail": {"ratio": 0.5}},
        {"password": "x"},  # unknown members are refused
        {"replica": "a/b"},
    ],
)
def test_invalid_fields_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(AuditRecordError):
        build_record({**BASE, **fields})


def test_text_without_a_utf8_form_is_stored_with_replacement_characters() -> None:
    record = with_hash(build_record({**BASE, "caller": "agent\ud800", "chain": ["\udfff"]}))
    assert record.caller == "agent\ufffd"
    assert record.chain == ("\ufffd",)
    assert record_hash(decode_record(encode_record(record))) == record.hash


def test_any_change_changes_the_hash() -> None:
    record = with_hash(build_record({**BASE, "detail": {"n": 1}}))
    changed = msgspec.structs.replace(record, detail={"n": 2})
    assert record_hash(changed) != record.hash


# The stored form is fixed: a reader (verify, export, another broker) depends on these bytes.
PINNED_FIELDS = {
    "kind": "request", "request_id": "r-1", "caller": "alice", "chain": ["alice", "bob"],
    "tree": "t1", "target": "bob", "operation": "SendMessage", "decision": "allow",
    "status": 200, "latency_us": 1234, "request_digest": "sha256:" + "ab" * 32,
    "detail": {"phase": "outcome", "token.exp": 1796543631, "kind": "x", "hash": "y",
               "flag": True, "tags": ["pii", "\u00e9\"\\"]},
}  # fmt: skip
PINNED_LINE = (
    b'{"caller":"alice","chain":["alice","bob"],"cost_micro":0,"decision":"allow","detail":'
    b'{"flag":true,"hash":"y","kind":"x","phase":"outcome","tags":["pii","\xc3\xa9\\"\\\\"],'
    b'"token.exp":1796543631},'
    b'"hash":"sha256:fde35f30242733a81c6c907be83b585e1123241c4be858ae1676570e39004680",'
    b'"kind":"request","latency_us":1234,"operation":"SendMessage",'
    b'"prev":"sha256:cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",'
    b'"reason":"","replica":"r1",'
    b'"request_digest":"sha256:abababababababababababababababababababababababababababababababab",'
    b'"request_id":"r-1","response_digest":"","rule":"","seq":7,"skill":"","status":200,'
    b'"target":"bob","tokens_in":0,"tokens_out":0,"tree":"t1","ts_us":1796543571434563,"v":1}'
)


def test_a_sealed_record_is_stored_as_exactly_these_bytes() -> None:
    unhashed = build_record(
        PINNED_FIELDS, seq=7, prev="sha256:" + "cd" * 32, replica="r1", ts_us=1796543571434563
    )
    record = with_hash(unhashed)
    assert encode_record(record) == PINNED_LINE
    # The line kept from hashing is the one a fresh encoding gives, and decodes to the record.
    assert encode_record(decode_record(PINNED_LINE)) == PINNED_LINE
    assert decode_record(PINNED_LINE) == record
    assert record_hash(record) == record.hash


def test_the_chain_s_sealing_stores_exactly_these_bytes() -> None:
    record = sealed_record(
        PINNED_FIELDS, seq=7, prev="sha256:" + "cd" * 32, replica="r1", ts_us=1796543571434563
    )
    assert encode_record(record) == PINNED_LINE
    assert decode_record(PINNED_LINE) == record


@pytest.mark.parametrize(
    "fields",
    [
        BASE,
        {**BASE, "hash": "sha256:" + "00" * 32},  # a caller's own hash is not what is covered
        {**BASE, "caller": "agent\ud800", "chain": ["\udfff"], "detail": {"k": "\ud800"}},
    ],
)
def test_sealing_gives_what_hashing_a_built_record_gives(fields: dict[str, object]) -> None:
    sealed = sealed_record(fields)
    expected = with_hash(build_record(fields))
    assert sealed == expected
    # The kept line is the one a fresh encoding of a copy (which keeps no line) gives.
    assert encode_record(sealed) == encode_record(msgspec.structs.replace(sealed))
    assert record_hash(sealed) == sealed.hash


@pytest.mark.parametrize("replica", ["a/b", "", "-r1", "r" * 65, "r1 "])
def test_a_replica_id_is_checked_for_every_record(replica: str) -> None:
    build_record(BASE)  # "r1" is known now: a known id is a set lookup, others are searched
    with pytest.raises(AuditRecordError, match="replica"):
        build_record({**BASE, "replica": replica})
    line = PINNED_LINE.replace(b'"replica":"r1"', b'"replica":' + msgspec.json.encode(replica))
    with pytest.raises(msgspec.ValidationError, match="replica"):
        decode_record(line)


def test_a_stored_line_with_a_bad_detail_key_is_not_a_record() -> None:
    bad = PINNED_LINE.replace(b'"flag":true', b'"Flag":true')
    with pytest.raises(msgspec.ValidationError):
        decode_record(bad)


def test_a_changed_copy_is_encoded_afresh() -> None:
    record = with_hash(build_record(BASE))
    changed = msgspec.structs.replace(record, caller="mallory")
    assert b'"caller":"mallory"' in encode_record(changed)
    assert encode_record(changed) != encode_record(record)
