"""Any single alteration of a produced log is found by verify, with the right kind and exit code;
an untouched log always verifies."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from broker.audit.chain import AuditChain
from broker.audit.findings import EXIT_CODES, Finding
from broker.audit.records import KeptCheckpoint, build_record, encode_record, with_hash
from broker.audit.verify import VerifyReport, verify_chain
from broker.identity.keys import BrokerKeys

KEYS = BrokerKeys(Ed25519PrivateKey.generate())
PUBLIC = {KEYS.kid: KEYS.private_key.public_key()}
OTHER = BrokerKeys(Ed25519PrivateKey.generate())
KINDS = ["request", "auth.failure", "token.mint", "registry.change", "policy.reload", "budget",
         "killswitch"]
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def event(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "kind": draw(st.sampled_from(KINDS)),
        "caller": draw(text),
        "target": draw(text),
        "chain": draw(st.lists(text, max_size=3)),
        "decision": draw(st.sampled_from(["allow", "deny", ""])),
        "status": draw(st.integers(0, 599)),
        "latency_us": draw(st.integers(0, 10**9)),
        "detail": draw(st.dictionaries(st.sampled_from(["a", "b.c", "task_id"]),
                                       st.one_of(text, st.integers(-10**6, 10**6), st.booleans()),
                                       max_size=2)),
    }


@st.composite
def produced_logs(draw: st.DrawFn) -> list[bytes]:
    """The lines (with newlines) of one replica's log, checkpoints at a random cadence."""
    clock = iter(range(1_700_000_000_000_000, 1_800_000_000_000_000, 7))
    chain = AuditChain("r1", KEYS, checkpoint_every=draw(st.integers(1, 6)),
                       checkpoint_interval_s=3600, clock_us=lambda: next(clock))
    lines = []
    for fields in draw(st.lists(event(), min_size=1, max_size=20)):
        lines += [encode_record(r) + b"\n" for r in chain.seal_with_checkpoint(fields)]
    if draw(st.booleans()):
        lines.append(encode_record(chain.checkpoint()) + b"\n")
    return lines


def kept(lines: list[bytes]) -> KeptCheckpoint:
    last = json.loads(lines[-1])
    return KeptCheckpoint("r1", last["seq"], last["hash"])


def verify(lines: list[bytes], checkpoint: KeptCheckpoint | None) -> VerifyReport:
    return verify_chain(lines, PUBLIC, checkpoint, newline_terminated=True)


def assert_found(report: VerifyReport, kind: Finding) -> None:
    assert not report.ok
    assert report.kind == kind.value, report
    assert report.exit_code == EXIT_CODES[kind]


@SETTINGS
@given(produced_logs())
def test_an_untouched_log_verifies(lines: list[bytes]) -> None:
    for checkpoint in (None, kept(lines)):
        report = verify(lines, checkpoint)
        assert report.ok, report
        assert report.exit_code == 0
        assert report.last_seq == len(lines)


@SETTINGS
@given(produced_logs(), st.data())
def test_an_edited_value_is_found(lines: list[bytes], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(lines) - 1))
    record = json.loads(lines[index])
    name = data.draw(st.sampled_from(sorted(record)))
    new = data.draw(st.one_of(text, st.integers(), st.booleans(), st.none(), st.lists(text)))
    assume(new != record[name] or type(new) is not type(record[name]))
    record[name] = new
    lines[index] = json.dumps(record, ensure_ascii=False).encode() + b"\n"
    report = verify(lines, kept(lines[-1:]) if index != len(lines) - 1 else None)
    assert_found(report, Finding.EDITED)
    assert report.line == index + 1


@SETTINGS
@given(produced_logs(), st.data())
def test_a_deleted_line_is_found(lines: list[bytes], data: st.DataObject) -> None:
    checkpoint = kept(lines)
    index = data.draw(st.integers(0, len(lines) - 1))
    del lines[index]
    last = index == len(lines)
    assert_found(verify(lines, checkpoint), Finding.TRUNCATED if last else Finding.DELETED)
    if not last:
        assert_found(verify(lines, None), Finding.DELETED)


@SETTINGS
@given(produced_logs(), st.data())
def test_an_inserted_copy_is_found(lines: list[bytes], data: st.DataObject) -> None:
    checkpoint = kept(lines)
    copy = lines[data.draw(st.integers(0, len(lines) - 1))]
    lines.insert(data.draw(st.integers(0, len(lines))), copy)
    assert_found(verify(lines, checkpoint), Finding.INSERTED)
    assert_found(verify(lines, None), Finding.INSERTED)


@SETTINGS
@given(produced_logs(), st.data(), event())
def test_an_inserted_fabrication_is_found(
    lines: list[bytes], data: st.DataObject, fields: dict[str, Any]
) -> None:
    checkpoint = kept(lines)
    position = data.draw(st.integers(0, len(lines)))
    # At the very end a record continuing the chain is an append, which only a later
    # checkpoint could refute; there the forger reuses a seq instead.
    top = len(lines) + 5 if position < len(lines) else len(lines)
    seq = data.draw(st.integers(1, top))
    forged = with_hash(build_record({
        **fields, "seq": seq, "ts_us": 1, "replica": "r1",
        "prev": "sha256:" + secrets.token_hex(32),
    }))
    lines.insert(position, encode_record(forged) + b"\n")
    assert_found(verify(lines, checkpoint), Finding.INSERTED)


@SETTINGS
@given(produced_logs(), st.data(), event(), st.booleans())
def test_an_inserted_record_whose_hash_does_not_match_is_an_insertion(
    lines: list[bytes], data: st.DataObject, fields: dict[str, Any], by_hand: bool
) -> None:
    """A forger who cannot (or does not) compute the canonical hash: a made-up hash, or a
    copy of a real record edited and written with another JSON layout. Anywhere but at the
    end (where nothing shows the chain going on across it) this is an insertion (12), not an
    edit: the record after it continues the chain from the one before it."""
    checkpoint = kept(lines)
    position = data.draw(st.integers(0, len(lines) - 1))
    if by_hand:
        copy = json.loads(lines[data.draw(st.integers(0, len(lines) - 1))])
        copy["caller"] = "mallory"
        line = json.dumps(copy, indent=data.draw(st.sampled_from([None, 1]))).replace("\n", " ")
        forged = line.encode() + b"\n"
    else:
        seq = data.draw(st.integers(1, len(lines) + 5))
        record = build_record({**fields, "seq": seq, "ts_us": 1, "replica": "r1", "prev": "",
                               "hash": "sha256:" + secrets.token_hex(32)})  # fmt: skip
        forged = encode_record(record) + b"\n"
    lines.insert(position, forged)
    for checkpoint_given in (checkpoint, None):
        report = verify(lines, checkpoint_given)
        assert_found(report, Finding.INSERTED)
        assert report.line == position + 1


@SETTINGS
@given(produced_logs(), st.data())
def test_swapped_lines_are_found(lines: list[bytes], data: st.DataObject) -> None:
    assume(len(lines) >= 2)
    checkpoint = kept(lines)
    i = data.draw(st.integers(0, len(lines) - 2))
    j = data.draw(st.integers(i + 1, len(lines) - 1))
    lines[i], lines[j] = lines[j], lines[i]
    assert_found(verify(lines, checkpoint), Finding.REORDERED)
    assert_found(verify(lines, None), Finding.REORDERED)


@SETTINGS
@given(produced_logs(), st.data())
def test_truncation_is_found_against_the_kept_checkpoint(
    lines: list[bytes], data: st.DataObject
) -> None:
    checkpoint = kept(lines)
    blob = b"".join(lines)
    # Anywhere before the last record's final character (dropping only the newline loses nothing).
    cut = data.draw(st.integers(0, len(blob) - 2))
    truncated = blob[:cut].splitlines(keepends=True)
    assert_found(verify(truncated, checkpoint), Finding.TRUNCATED)


@SETTINGS
@given(produced_logs())
def test_checkpoints_signed_by_another_key_are_found(lines: list[bytes]) -> None:
    assume(any(b'"kind":"checkpoint"' in line for line in lines))
    other = {OTHER.kid: OTHER.private_key.public_key()}
    assert_found(verify_chain(lines, other, None, newline_terminated=True),
                 Finding.BAD_SIGNATURE)


@SETTINGS
@given(produced_logs(), st.data())
def test_a_rewritten_and_rehashed_log_is_not_accepted(
    lines: list[bytes], data: st.DataObject
) -> None:
    """The forger edits a record and recomputes every hash after it, but cannot sign."""
    checkpoint = kept(lines)
    index = data.draw(st.integers(0, len(lines) - 1))
    records = [json.loads(line) for line in lines]
    records[index]["reason"] = "rewritten"
    for position in range(index, len(records)):
        record = records[position]
        if position > 0:
            record["prev"] = records[position - 1]["hash"]
        if record["kind"] == "checkpoint":
            record["detail"]["head_hash"] = record["prev"]
        del record["hash"]
        record["hash"] = with_hash(build_record(record)).hash
    forged = [encode_record(with_hash(build_record(
        {k: v for k, v in r.items() if k != "hash"}))) + b"\n" for r in records]
    report = verify(forged, checkpoint)
    assert not report.ok
    assert report.kind in {Finding.BAD_SIGNATURE.value, Finding.TRUNCATED.value}


@pytest.mark.parametrize("line", [b"not json\n", b"[1, 2]\n", b"\xff\xfe\n"])
def test_a_line_that_is_not_a_record_is_malformed(line: bytes) -> None:
    chain = AuditChain("r1", KEYS)
    lines = [encode_record(chain.seal({"kind": "request"})) + b"\n" for _ in range(3)]
    lines.insert(1, line)
    assert_found(verify(lines, None), Finding.MALFORMED)
