"""verify_chain on hand-made alterations the property tests do not generate."""

from __future__ import annotations

import json

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.chain import AuditChain, b64url
from broker.audit.records import KeptCheckpoint, build_record, encode_record, with_hash
from broker.audit.verify import verify_chain
from broker.identity.keys import BrokerKeys

KEYS = BrokerKeys(Ed25519PrivateKey.generate())
PUBLIC = {KEYS.kid: KEYS.private_key.public_key()}


def produce(count: int, every: int = 4, replica: str = "r1") -> list[bytes]:
    chain = AuditChain(replica, KEYS, checkpoint_every=every)
    lines = []
    for n in range(count):
        records = chain.seal_with_checkpoint({"kind": "request", "detail": {"n": n}})
        lines += [encode_record(r) + b"\n" for r in records]
    return lines


def rehash(record: dict[str, object]) -> bytes:
    fields = {k: v for k, v in record.items() if k != "hash"}
    return encode_record(with_hash(build_record(fields))) + b"\n"


def test_a_report_counts_checkpoints_and_the_unsigned_tail() -> None:
    lines = produce(10, every=4)  # checkpoints after records 4 and 8 (seq 5 and 10)
    report = verify_chain(lines, PUBLIC)
    assert report.ok and report.exit_code == 0
    assert (report.last_seq, report.checkpoints, report.signed_seq) == (12, 2, 9)


def test_a_forged_signature_is_a_bad_signature() -> None:
    lines = produce(4, every=4)
    checkpoint = json.loads(lines[4])
    checkpoint["detail"]["sig"] = b64url(Ed25519PrivateKey.generate().sign(b"x"))
    lines[4] = rehash(checkpoint)
    report = verify_chain(lines, PUBLIC)
    assert (report.kind, report.seq, report.line, report.exit_code) == (
        "bad_signature", 5, 5, 16)


def test_a_checkpoint_that_covers_another_record_is_a_bad_signature() -> None:
    lines = produce(4, every=4)
    checkpoint = json.loads(lines[4])
    checkpoint["detail"]["head_seq"] = 2
    lines[4] = rehash(checkpoint)
    assert verify_chain(lines, PUBLIC).kind == "bad_signature"


def test_an_unknown_key_is_a_bad_signature() -> None:
    assert verify_chain(produce(4, every=4), {}).kind == "bad_signature"


def test_a_record_altered_and_rehashed_breaks_the_next_link() -> None:
    lines = produce(6, every=100)
    record = json.loads(lines[2])
    record["caller"] = "someone-else"
    lines[2] = rehash(record)
    report = verify_chain(lines, PUBLIC)
    assert (report.kind, report.seq) == ("edited", 3)


def test_a_kept_checkpoint_that_no_longer_matches_means_the_tail_was_rewritten() -> None:
    lines = produce(3, every=100)
    kept = KeptCheckpoint("r1", 3, json.loads(lines[2])["hash"])
    record = json.loads(lines[2])
    record["status"] = 500
    lines[2] = rehash(record)  # the last record replaced with a consistent forgery
    report = verify_chain(lines, PUBLIC, kept)
    assert (report.kind, report.seq, report.exit_code) == ("truncated", 3, 14)


def test_a_torn_last_line_is_a_truncation_but_a_torn_line_inside_is_malformed() -> None:
    lines = produce(3)
    torn = [*lines[:2], lines[2][:40]]
    report = verify_chain(torn, PUBLIC, newline_terminated=True)
    assert (report.kind, report.exit_code) == ("truncated", 14)
    inside = [lines[0], lines[1][:40], lines[2]]
    assert verify_chain(inside, PUBLIC, newline_terminated=True).kind == "malformed"


def test_a_record_of_another_replica_is_an_insertion() -> None:
    lines = produce(3, replica="r1")
    lines.insert(1, produce(1, replica="r2")[0])
    assert verify_chain(lines, PUBLIC).kind == "inserted"


def test_a_second_chain_continuing_from_an_earlier_record_is_a_fork() -> None:
    lines = produce(5, every=100)
    chain = AuditChain("r1", KEYS)
    first = msgspec.json.decode(lines[0])
    chain.reset(chain.head._replace(seq=first["seq"], hash=first["hash"]))
    branch = [encode_record(chain.seal({"kind": "request", "detail": {"fork": True}})) + b"\n"
              for _ in range(3)]
    report = verify_chain(lines + branch, PUBLIC)
    assert (report.kind, report.seq, report.line, report.exit_code) == ("forked", 2, 6, 15)


def test_records_are_accepted_as_well_as_lines() -> None:
    chain = AuditChain("r1", KEYS, checkpoint_every=2)
    records = [r for _ in range(5) for r in chain.seal_with_checkpoint({"kind": "request"})]
    assert verify_chain(records, PUBLIC).ok
