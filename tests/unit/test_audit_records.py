"""Audit records: what a record may hold, and its hash."""

from __future__ import annotations

import msgspec
import pytest

from broker.audit.records import (
    AuditRecordError,
    build_record,
    decode_record,
    encode_record,
    record_hash,
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
