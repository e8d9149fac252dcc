"""The stored form of a record is RFC 8785 (JCS): msgspec's sorted compact JSON equals the
reference canonicaliser for records holding arbitrary text, and hashing the stored line
directly gives the record's hash."""

from __future__ import annotations

from typing import Any

from a2a.utils._jcs import canonicalize
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit.records import (
    AuditRecord,
    build_record,
    decode_record,
    encode_record,
    record_hash,
    stored_hash,
    unhashed_json,
    with_hash,
)

MAX_SAFE = 2**53 - 1
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
safe_ints = st.integers(-MAX_SAFE, MAX_SAFE)
# "hash" and "kind" in detail must not confuse finding the record's own "hash" member.
detail_keys = st.one_of(st.sampled_from(["hash", "kind", "seq"]),
                        st.from_regex(r"^[a-z][a-z0-9_.]{0,20}$", fullmatch=True))
detail_values = st.one_of(text, safe_ints, st.booleans(), st.lists(text, max_size=4))


@st.composite
def records(draw: st.DrawFn) -> AuditRecord:
    fields: dict[str, Any] = {
        name: draw(text)
        for name in ("kind", "request_id", "caller", "tree", "target", "operation", "skill",
                     "decision", "reason", "rule", "request_digest", "response_digest", "prev")
    }
    fields |= {
        name: draw(safe_ints)
        for name in ("ts_us", "status", "latency_us", "tokens_in", "tokens_out", "cost_micro")
    }
    fields["chain"] = draw(st.lists(text, max_size=5))
    fields["detail"] = draw(st.dictionaries(detail_keys, detail_values, max_size=6))
    fields["seq"] = draw(st.integers(1, MAX_SAFE))
    fields["replica"] = draw(st.from_regex(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,20}$", fullmatch=True))
    return with_hash(build_record(fields))


@settings(max_examples=150, deadline=None)
@given(records())
def test_stored_json_is_rfc8785(record: AuditRecord) -> None:
    as_dict = {name: getattr(record, name) for name in record.__struct_fields__}
    as_dict["chain"] = list(record.chain)
    assert encode_record(record).decode("utf-8") == canonicalize(as_dict)
    del as_dict["hash"]
    assert unhashed_json(record).decode("utf-8") == canonicalize(as_dict)


@settings(max_examples=100, deadline=None)
@given(records())
def test_stored_json_round_trips_and_hash_holds(record: AuditRecord) -> None:
    line = encode_record(record)
    decoded = decode_record(line)
    assert decoded == record
    assert record_hash(decoded) == record.hash
    assert stored_hash(line) == record.hash


@settings(max_examples=150, deadline=None)
@given(records())
def test_the_line_kept_from_hashing_is_the_fresh_encoding(record: AuditRecord) -> None:
    fresh = decode_record(encode_record(record))  # decoded: nothing kept, encoded afresh
    assert encode_record(fresh) == encode_record(record)
    assert fresh == record
