"""What the console reads from the audit log: searches, chain verification, delegation trees.

The log is the one every replica writes (``[audit] backend``); with auditing off these pages
say so. Searches read the log from its start and keep the newest ``limit`` matches, like
``a2a-broker audit search``; verification reads each replica's chain once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.audit.log import AuditLog
from broker.audit.records import AuditRecord
from broker.audit.sources import RecordFilter
from broker.audit.verify import VerifyReport, averify_chain
from broker.identity.keys import BrokerKeys

SEARCH_LIMIT = 200


async def search(
    log: AuditLog, chosen: RecordFilter, limit: int = SEARCH_LIMIT
) -> list[AuditRecord]:
    """The newest ``limit`` records that match, newest first."""
    kept: deque[AuditRecord] = deque(maxlen=limit)
    async for record in log.read(None):
        if chosen.matches(record):
            kept.append(record)
    return list(reversed(kept))


def public_keys(keys: BrokerKeys) -> dict[str, Ed25519PublicKey]:
    found = {}
    for jwk in keys.jwks()["keys"]:
        key = keys.public_key(jwk["kid"])
        if key is not None:
            found[jwk["kid"]] = key
    return found


async def verify_all(log: AuditLog, keys: Mapping[str, Ed25519PublicKey]) -> list[VerifyReport]:
    """One report per replica chain in the log (as ``a2a-broker audit verify`` gives them)."""
    reports = []
    for replica in await log.replicas():
        report = await averify_chain(log.read_raw(replica), keys)
        reports.append(report if report.replica else _named(report, replica))
    return reports


def _named(report: VerifyReport, replica: str) -> VerifyReport:
    import msgspec  # noqa: PLC0415

    return msgspec.structs.replace(report, replica=replica)


@dataclass(slots=True)
class Hop:
    """One agent in a delegation tree: the calls made to it along one chain."""

    agent: str
    path: tuple[str, ...]
    calls: list[dict[str, Any]] = field(default_factory=list)
    children: list[Hop] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The worst outcome of its calls: refused, failed, open (no outcome yet) or ok."""
        states = {c["state"] for c in self.calls}
        for state in ("refused", "failed", "open"):
            if state in states:
                return state
        return "ok" if states else "caller"

    @property
    def cost_micro(self) -> int:
        return sum(int(c["cost_micro"]) for c in self.calls)

    @property
    def tokens(self) -> int:
        return sum(int(c["tokens"]) for c in self.calls)


def build_tree(records: list[AuditRecord]) -> list[Hop]:
    """The tree's hops from its request records (oldest first): a hop's path is its chain and
    its target, and its parent is the hop whose path is its chain."""
    calls: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.kind not in ("request", "auth.failure"):
            continue
        phase = str(record.detail.get("phase", ""))
        call = calls.setdefault(record.request_id, _call(record))
        call["state"] = _state(phase, record, call["state"])
        if phase in ("outcome", "refused"):
            call["status"] = record.status
            call["reason"] = record.reason
            call["tokens"] = record.tokens_in + record.tokens_out
            call["cost_micro"] = record.cost_micro
    hops: dict[tuple[str, ...], Hop] = {}
    for call in calls.values():
        path = (*call["chain"], call["target"])
        _hop(hops, path).calls.append(call)
    return [hop for path, hop in hops.items() if len(path) == 1]


def _call(record: AuditRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "operation": record.operation,
        "chain": tuple(record.chain) or (record.caller,),
        "target": record.target or "?",
        "state": "open",
        "status": record.status,
        "reason": record.reason,
        "tokens": 0,
        "cost_micro": 0,
        "ts_us": record.ts_us,
    }


def _state(phase: str, record: AuditRecord, before: str) -> str:
    if phase == "refused" or record.decision == "deny":
        return "refused"
    if phase == "outcome":
        return "failed" if record.reason or record.status >= 400 else "ok"
    return before


def _hop(hops: dict[tuple[str, ...], Hop], path: tuple[str, ...]) -> Hop:
    hop = hops.get(path)
    if hop is None:
        hop = hops[path] = Hop(path[-1], path)
        if len(path) > 1:
            _hop(hops, path[:-1]).children.append(hop)
    return hop
