"""The tamper-evident audit chain: records, per-replica hash chains, durable logs, verification.

- ``records``: ``AuditRecord`` and its canonical JSON (RFC 8785) and hash.
- ``chain``: ``AuditChain`` numbers and links records and signs checkpoints (Ed25519).
- ``log``: the ``AuditLog`` interface; ``file_log.FileAuditLog`` and ``redis_log.RedisAuditLog``.
- ``trail``: ``AuditTrail``, what the pipeline calls: seal, append durably, checkpoint.
- ``verify``: ``verify_chain``, which finds edits, deletions, insertions, reordering, truncation
  and forks; ``cli`` holds the ``a2a-broker audit`` commands.

See docs/audit.md for the format and the guarantees.
"""

from broker.audit.chain import AuditChain
from broker.audit.log import AuditChainGapError, AuditLog, AuditLogError
from broker.audit.records import AuditRecord, AuditRecordError, ChainHead, KeptCheckpoint
from broker.audit.trail import AuditTrail
from broker.audit.verify import VerifyReport, verify_chain

__all__ = [
    "AuditChain",
    "AuditChainGapError",
    "AuditLog",
    "AuditLogError",
    "AuditRecord",
    "AuditRecordError",
    "AuditTrail",
    "ChainHead",
    "KeptCheckpoint",
    "VerifyReport",
    "verify_chain",
]
