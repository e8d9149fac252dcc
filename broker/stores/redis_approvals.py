"""Approvals in Redis, shared by every replica (``ApprovalStore``).

Every key shares the hash tag ``{approvals}``, so each script's keys sit in one Cluster slot:

- ``<prefix>:approval:{approvals}:<id>``: a hash per approval, expiring when it is forgotten.
  ``rec`` holds what never changes (JSON); the fields the scripts read and write are plain
  strings beside it: ``state``, ``exp``, ``digest``, ``deny`` (who may never decide, one per
  line), ``votes`` (who approved, one per line), ``quorum``, ``by``, ``why``, ``at``,
  ``agent_task``; ``call`` and ``answer`` hold the held call and the agent's answer.
- ``<prefix>:approval:{approvals}:index``: sorted set, approval id -> when it is forgotten.
- ``<prefix>:approval:{approvals}:digest:<sha256>``: the approval holding that action, until
  it expires (a second request for the same action while it waits gets the same approval).

Each step that reads before it writes (decide, consume, end, create) is one Lua script.
"""

from __future__ import annotations

from typing import Any, cast

import msgspec

from broker.stores.approvals_base import ApprovalRecord, ApprovalState, ApprovalStore, Outcome
from broker.stores.redis_client import RedisClient, lua_source, unavailable_on_error

_RECORD = msgspec.json.Encoder()
_LIVE_FIELDS = ("rec", "state", "votes", "by", "why", "at", "agent_task", "agent_context")
_STATIC_EXCLUDED = frozenset({"state", "approved_by", "decided_by", "reason", "decided_at",
                              "agent_task", "agent_context"})


class RedisApprovalStore(ApprovalStore):
    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self._base = f"{prefix}:approval:{{approvals}}:"
        self._index = f"{self._base}index"
        self._create = client.register_script(lua_source("approval_create.lua"))
        self._decide = client.register_script(lua_source("approval_decide.lua"))
        self._consume = client.register_script(lua_source("approval_consume.lua"))
        self._end = client.register_script(lua_source("approval_end.lua"))

    @unavailable_on_error
    async def create(
        self, record: ApprovalRecord, call: bytes, retain_s: float
    ) -> ApprovalRecord:
        static = {
            k: v for k, v in msgspec.to_builtins(record).items() if k not in _STATIC_EXCLUDED
        }
        fields: dict[str, str | bytes] = {
            "rec": _RECORD.encode(static),
            "state": record.state,
            "exp": repr(record.expires_at),
            "digest": record.digest,
            "deny": "\n" + "\n".join(sorted(record.deciders)) + "\n",
            "votes": "\n".join(record.approved_by),
            "quorum": str(record.quorum),
            "by": "",
            "why": "",
            "at": "0",
            "agent_task": "",
            "call": call,
        }
        forget_at = record.expires_at + retain_s
        flat = [x for pair in fields.items() for x in pair]
        digest_key = f"{self._base}digest:{record.digest}"
        seen = _text(await self._client.get(digest_key) or b"")
        in_force = _text(await self._create(
            keys=[self._key(record.id), self._index, digest_key, self._key(seen or record.id)],
            args=[record.id, repr(forget_at), repr(record.created_at), repr(record.expires_at),
                  seen, *flat],
        ))  # fmt: skip
        if in_force == record.id:
            return record
        return await self.get(in_force) or record

    @unavailable_on_error
    async def get(self, approval_id: str) -> ApprovalRecord | None:
        return _record(await self._client.hmget(self._key(approval_id), _LIVE_FIELDS))

    @unavailable_on_error
    async def call(self, approval_id: str) -> bytes | None:
        return _bytes(await self._client.hget(self._key(approval_id), "call"))

    @unavailable_on_error
    async def list(self) -> list[ApprovalRecord]:
        ids = await self._client.zrange(self._index, 0, -1)
        if not ids:
            return []
        pipe = self._client.pipeline(transaction=False)
        for approval_id in ids:
            pipe.hmget(self._key(_text(cast(bytes, approval_id))), _LIVE_FIELDS)
        rows = await pipe.execute()
        found = [r for row in rows if (r := _record(row)) is not None]
        return sorted(found, key=lambda r: r.created_at)

    @unavailable_on_error
    async def decide(
        self, approval_id: str, approver: str, approve: bool, reason: str, now: float
    ) -> Outcome:
        if "\n" in approver:
            return Outcome("in_chain")
        status = await self._decide(
            keys=[self._key(approval_id)],
            args=[approver, "1" if approve else "0", reason, repr(now)],
        )
        return await self._outcome(approval_id, status)

    @unavailable_on_error
    async def consume(self, approval_id: str, digest: str, now: float) -> Outcome:
        status = await self._consume(keys=[self._key(approval_id)], args=[digest, repr(now)])
        return await self._outcome(approval_id, status)

    @unavailable_on_error
    async def end(
        self, approval_id: str, state: ApprovalState, reason: str, now: float
    ) -> Outcome:
        status = await self._end(keys=[self._key(approval_id)], args=[state, reason, repr(now)])
        return await self._outcome(approval_id, status)

    @unavailable_on_error
    async def forwarded(
        self, approval_id: str, agent_task: str, answer: bytes, agent_context: str = ""
    ) -> None:
        key = self._key(approval_id)
        # Written only by the one replica that consumed the approval: no race to guard.
        if _text(await self._client.hget(key, "state") or b"") == "used":
            await self._client.hset(key, mapping={
                "agent_task": agent_task, "answer": answer, "agent_context": agent_context,
            })

    @unavailable_on_error
    async def answer(self, approval_id: str) -> bytes | None:
        return _bytes(await self._client.hget(self._key(approval_id), "answer"))

    async def _outcome(self, approval_id: str, status: Any) -> Outcome:
        record = await self.get(approval_id)
        return Outcome(_text(status), record)  # type: ignore[arg-type]

    def _key(self, approval_id: str) -> str:
        return f"{self._base}{approval_id}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _record(row: list[Any]) -> ApprovalRecord | None:
    rec, state, votes, by, why, at, agent_task, agent_context = row
    if rec is None:
        return None
    static = msgspec.json.decode(rec)
    voters = _text(votes or b"")
    return msgspec.convert(
        {
            **static,
            "state": _text(state),
            "approved_by": voters.split("\n") if voters else [],
            "decided_by": _text(by or b""),
            "reason": _text(why or b""),
            "decided_at": float(_text(at or b"0")),
            "agent_task": _text(agent_task or b""),
            "agent_context": _text(agent_context or b""),
        },
        ApprovalRecord,
    )
