"""The hash chain of one replica: numbering, links, checkpoints by count and by time."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.chain import AuditChain, b64url_decode, checkpoint_message
from broker.audit.records import EMPTY_HEAD, AuditRecordError, ChainHead
from broker.identity.keys import BrokerKeys

KEYS = BrokerKeys(Ed25519PrivateKey.generate())


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_records_are_numbered_and_linked() -> None:
    chain = AuditChain("r1", KEYS)
    first = chain.seal({"kind": "request"})
    second = chain.seal({"kind": "request", "ts_us": 5})
    assert (first.seq, first.prev, first.replica) == (1, "", "r1")
    assert (second.seq, second.prev) == (2, first.hash)
    assert second.ts_us >= first.ts_us  # never runs backwards within a chain
    assert chain.head == ChainHead(2, second.hash)


def test_a_checkpoint_follows_every_nth_record_and_signs_the_one_before() -> None:
    chain = AuditChain("r1", KEYS, checkpoint_every=3)
    batches = [chain.seal_with_checkpoint({"kind": "request"}) for _ in range(6)]
    assert [len(b) for b in batches] == [1, 1, 2, 1, 1, 2]
    record, checkpoint = batches[2]
    detail = checkpoint.detail
    assert checkpoint.kind == "checkpoint"
    assert (checkpoint.seq, checkpoint.prev) == (4, record.hash)
    assert detail["head_seq"] == 3 and detail["head_hash"] == record.hash
    assert detail["kid"] == KEYS.kid
    assert isinstance(detail["sig"], str)
    KEYS.private_key.public_key().verify(
        b64url_decode(detail["sig"]), checkpoint_message("r1", 3, record.hash)
    )


def test_a_checkpoint_is_due_after_the_interval_only_if_something_is_unsigned() -> None:
    clock = FakeTime()
    chain = AuditChain("r1", KEYS, checkpoint_every=1000, checkpoint_interval_s=10,
                       monotonic=clock)
    clock.now += 60
    assert not chain.checkpoint_due()  # nothing to sign
    assert len(chain.seal_with_checkpoint({"kind": "request"})) == 2
    assert len(chain.seal_with_checkpoint({"kind": "request"})) == 1
    clock.now += 10
    assert chain.checkpoint_due()


def test_reset_continues_from_a_stored_head() -> None:
    chain = AuditChain("r1", KEYS)
    chain.reset(ChainHead(41, "sha256:" + "ab" * 32))
    record = chain.seal({"kind": "request"})
    assert (record.seq, record.prev) == (42, "sha256:" + "ab" * 32)
    chain.reset(EMPTY_HEAD)
    assert chain.seal({"kind": "request"}).seq == 1


def test_invalid_fields_leave_the_chain_unchanged() -> None:
    chain = AuditChain("r1", KEYS)
    with pytest.raises(AuditRecordError):
        chain.seal({"kind": "request", "latency_us": 0.5})
    assert chain.head == EMPTY_HEAD


def test_a_replica_id_must_be_a_safe_name() -> None:
    with pytest.raises(ValueError, match="replica id"):
        AuditChain("../etc", KEYS)
