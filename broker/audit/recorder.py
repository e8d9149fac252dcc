"""The audit trail one broker process writes to, and the records the broker's parts emit.

One record per decision and outcome: a refused request is one record (``auth.failure`` for
credential refusals, ``request`` with decision ``deny`` otherwise); a forwarded request is two
``request`` records, the decision (phase ``forward``, holding the minted token's id and expiry:
the token mint is this record) written durably *before* the request leaves, and the outcome
(phase ``outcome``) when the answer or stream ends. Operator actions (registry changes, the kill
switch, policy errors) are one record each. Never a secret: bodies appear only as SHA-256 digests.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial
from typing import Any

from broker.audit.file_log import FileAuditLog
from broker.audit.log import AuditLog, AuditLogError
from broker.audit.records import AuditRecordError
from broker.audit.redact import redacted_payload
from broker.audit.redis_log import RedisAuditLog
from broker.audit.replica_id import claim_default_replica
from broker.audit.trail import AuditTrail
from broker.audit.witness import FileWitness, RedisWitness, Witness, WitnessWriter
from broker.background import BackgroundTasks
from broker.errors import (
    AuditUnavailableError,
    BrokerError,
    CallerSuspendedError,
    InvalidCredentialError,
    UnauthenticatedError,
)
from broker.identity.keys import BrokerKeys
from broker.observability.probes import audit_written
from broker.pipeline.stage import stream_end
from broker.settings import Settings
from broker.types import CallContext, MediationContext

log = logging.getLogger("a2a_broker.audit")
_KEY = re.compile(r"[^a-z0-9_.]")
_AUTH_REFUSALS = (UnauthenticatedError, InvalidCredentialError, CallerSuspendedError)
_REQUEST_KINDS = ("request", "auth.failure")


def digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest() if body else ""


_RECORD_METHODS = ("record", "record_staged", "record_soon")


class AuditRecorder:
    """Writes the broker's records. ``trail`` None means auditing is off. Requests from or to
    ``payload_agents`` also keep a redacted copy of their body (at their forward/refusal).
    ``tasks``: where checkpoints and ``record_soon`` run (the runtime's; by default its own)."""

    def __init__(
        self,
        trail: AuditTrail | None,
        payload_agents: frozenset[str] = frozenset(),
        tasks: BackgroundTasks | None = None,
    ):
        self.trail = trail
        self.payload_agents = payload_agents
        # The policy version in force now, for records of requests refused before the policy
        # stage decided anything (the runtime sets it once the policy is loaded).
        self.policy_version: Callable[[], str] = lambda: ""
        self._tasks = tasks if tasks is not None else BackgroundTasks()
        self._pending: set[asyncio.Future[None]] = set()
        self._checkpoints: asyncio.Task[None] | None = None
        if trail is not None:
            self._checkpoints = self._tasks.spawn(trail.run_checkpoints(), "audit-ckpt")

    @property
    def drops_records(self) -> bool:
        """Every record handed to this recorder is dropped unread: auditing is off (no trail)
        and its record methods are these (a recorder that keeps records another way overrides
        them). Stages then need not build the records at all (decision 0093)."""
        cls = type(self)
        return self.trail is None and all(
            getattr(cls, name) is getattr(AuditRecorder, name) for name in _RECORD_METHODS
        )

    async def record(self, fields: Mapping[str, Any], *, durable: bool = True) -> None:
        """Append durably; raises AuditUnavailableError if the log cannot be written.
        ``durable=False``: written now, durable with the next fsync (``record_soon``)."""
        if self.trail is None:
            return
        fields = self._with_payload(fields)
        started = time.perf_counter()
        try:
            if durable:
                await self.trail.record(fields)
            else:
                await self.trail.record_written(fields)
        except AuditLogError as exc:
            audit_written(0.0, failed=True)
            raise AuditUnavailableError(detail=str(exc)) from None
        audit_written(time.perf_counter() - started)

    async def record_staged(self, fields: Mapping[str, Any]) -> asyncio.Future[None] | None:
        """Append as far as surviving this process (AuditUnavailableError if that fails); pass
        the future returned to ``durable`` to wait until the record is durable. None when it
        is durable already (a log that does not stage; auditing off)."""
        if self.trail is None:
            return None
        fields = self._with_payload(fields)
        started = time.perf_counter()
        try:
            staged = await self.trail.record_staged(fields)
        except AuditLogError as exc:
            audit_written(0.0, failed=True)
            raise AuditUnavailableError(detail=str(exc)) from None
        audit_written(time.perf_counter() - started)
        if staged is None:  # a log that does not stage: durable already
            return None
        if staged.done() and not staged.cancelled() and staged.exception() is None:
            return None
        return staged

    @staticmethod
    async def durable(synced: asyncio.Future[None]) -> None:
        """Wait for a staged record; AuditUnavailableError if it could not be made durable."""
        try:
            await synced
        except AuditLogError as exc:
            raise AuditUnavailableError(detail=str(exc)) from None

    def record_soon(self, fields: Mapping[str, Any]) -> None:
        """Append without waiting (for outcomes); a failure is logged, never raised.

        Sealed and queued at once, with no task of its own (one per request was a measurable
        share of its CPU); only a trail that must first re-read its stored head takes a task."""
        if self.trail is None:
            return
        if self._tasks.closed:  # the broker is shutting down
            log.error("audit record lost (shutting down): %s", dict(fields).get("request_id", ""))
            return
        fields = self._with_payload(fields)
        try:
            written = self.trail.record_written_nowait(
                fields, partial(self._written, time.perf_counter(), fields)
            )
        except AuditRecordError as exc:
            log.error("audit record lost (%s): %s", exc, fields.get("request_id", ""))  # noqa: TRY400
            return
        if written is None:
            task = self._tasks.spawn(self._record_logged(fields), "audit-record")
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            return
        self._pending.add(written)

    def _written(
        self, started: float, fields: Mapping[str, Any], written: asyncio.Future[None]
    ) -> None:
        self._pending.discard(written)
        if written.cancelled():
            return
        exc = written.exception()
        if exc is None:
            audit_written(time.perf_counter() - started)
            return
        audit_written(0.0, failed=True)
        lost = AuditUnavailableError(detail=str(exc)) if isinstance(exc, AuditLogError) else exc
        log.error("audit record lost (%s): %s", lost, fields.get("request_id", ""))

    async def event(self, kind: str, actor: str, **detail: str | int | bool) -> None:
        """An operator or system event (registry change, kill switch, policy reload/error)."""
        await self.record({"kind": kind, "caller": actor, "detail": dict(detail)})

    async def close(self) -> None:
        # Outcomes handed to ``after_reply`` by calls already answered run in the next loop
        # pass (decision 0106): let them be recorded before the trail closes.
        await asyncio.sleep(0)
        if self._checkpoints is not None:
            self._checkpoints.cancel()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self.trail is not None:
            await self.trail.close()

    def _with_payload(self, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        """``fields`` as recorded: naming a policy version, and without ``_body``, which is kept
        redacted for ``payload_agents``. A dict holding ``_body`` is one ``request_fields`` or
        ``llm_fields`` made for this record and handed over: the body leaves it in place (a copy
        of its members per decision cost more than the rest of this method)."""
        fields = self._with_policy_version(fields)
        if "_body" not in fields:
            return fields
        kept = fields if isinstance(fields, dict) else dict(fields)
        body = kept.pop("_body")
        agents = self.payload_agents
        if body and agents and agents & {kept.get("caller", ""), kept.get("target", "")}:
            kept["detail"] = {**kept.get("detail", {}), "payload": redacted_payload(body)}
        return kept

    def _with_policy_version(self, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        """Every request record names a policy version: the one that decided it, else the one
        in force when it was refused (docs/policy.md)."""
        detail = fields.get("detail") or {}
        if fields.get("kind") not in _REQUEST_KINDS or "policy_version" in detail:
            return fields
        version = self.policy_version()
        return {**fields, "detail": {**detail, "policy_version": version}} if version else fields

    async def _record_logged(self, fields: Mapping[str, Any]) -> None:
        try:
            # Nobody waits on it: written now, durable with the next record's fsync.
            await self.record(fields, durable=False)
        except (BrokerError, AuditRecordError) as exc:
            log.error("audit record lost (%s): %s", exc, dict(fields).get("request_id", ""))  # noqa: TRY400


def digested_stream(
    events: AsyncIterator[bytes], when_done: Callable[[str], None]
) -> AsyncIterator[bytes]:
    """Relay ``events`` unchanged; when the stream ends (however it ends) call ``when_done`` with
    the digest of everything relayed, so its outcome record covers the whole stream."""
    hashed = hashlib.sha256()

    async def done() -> None:
        when_done("sha256:" + hashed.hexdigest())

    return stream_end(events, done, observe=hashed.update)


def _body_digest(ctx: MediationContext) -> str:
    if ctx.body and not ctx.body_digest:
        ctx.body_digest = digest(ctx.body)
    return ctx.body_digest


def error_detail(err: BrokerError) -> dict[str, str]:
    """What a refusal names (which budget, which limit, which agent) and the log-only detail."""
    found = {f"error.{_KEY.sub('_', k.lower())}"[:64]: v[:200] for k, v in err.metadata.items()}
    if err.detail:
        found["error_detail"] = err.detail[:500]
    return found


def data_detail(ctx: CallContext) -> dict[str, str]:
    """What the data controls found, for the record: per direction, each type with its count
    and the action (``pii:card 2 redact, pii:email 1 tag``), and the tags the work carries
    after this hop. Never a value."""
    found: dict[str, str] = {}
    for direction, kinds in sorted((ctx.data_found or {}).items()):
        found[f"data.{direction}"] = ", ".join(
            f"{kind} {count} {action}" for kind, (count, action) in sorted(kinds.items())
        )
    if ctx.data_tags:
        found["data.tags"] = " ".join(ctx.data_tags)
    return found


def request_fields(
    ctx: MediationContext,
    *,
    phase: str,
    status: int,
    response_digest: str = "",
) -> dict[str, Any]:
    """The record of a mediated request at ``phase`` (forward, outcome or refused)."""
    err = ctx.error
    tree = ctx.hop.tree if ctx.hop else ctx.parent.tree if ctx.parent else ""
    detail: dict[str, str | int | bool] = {"phase": phase, "binding": ctx.binding}
    if ctx.task_id:
        detail["task_id"] = ctx.task_id
    if ctx.hop is not None:
        detail["token.jti"], detail["token.exp"] = ctx.hop.jti, ctx.hop.exp
    if ctx.policy_version:
        detail["policy_version"] = ctx.policy_version
    if ctx.approval_id:  # forwarded once a person approved it (docs/approvals.md)
        detail["approval"] = ctx.approval_id
    if ctx.approval_task:  # the broker's task id, standing for the agent's ``task_id``
        detail["approval_task"] = ctx.approval_task
    if ctx.trace_id:
        detail["trace_id"] = ctx.trace_id
    if err is not None:
        detail.update(error_detail(err))
    if ctx.data_found or ctx.data_tags:
        detail.update(data_detail(ctx))
    fields: dict[str, Any] = {
        "kind": "auth.failure" if isinstance(err, _AUTH_REFUSALS) else "request",
        "request_id": ctx.request_id,
        "caller": ctx.caller or "",
        "chain": ctx.chain,  # a tuple, as the record holds it: no list to convert
        "tree": tree,
        "target": ctx.target_name,
        "operation": ctx.operation.name if ctx.operation else "",
        "skill": ctx.skill,
        "decision": "deny" if err is not None and phase == "refused" else "allow",
        "reason": err.reason if err is not None else "",
        "rule": ctx.policy_rule,
        "status": status,
        "latency_us": int((time.perf_counter() - ctx.started) * 1_000_000),
        "request_digest": _body_digest(ctx),
        "response_digest": response_digest,
        "detail": detail,
    }
    if phase != "outcome" and ctx.body:
        # Not a record field: the recorder keeps a redacted copy for chosen agents, and takes
        # it out of these fields (``AuditRecorder._with_payload``).
        fields["_body"] = ctx.body
    return fields


async def open_recorder(
    settings: Settings, keys: BrokerKeys, tasks: BackgroundTasks | None = None
) -> AuditRecorder:
    """The process's recorder; raises AuditLogError if the log cannot be opened."""
    audit = settings.audit
    if audit.backend == "off":
        log.warning("[audit] backend = off: nothing is recorded")
        return AuditRecorder(None, tasks=tasks)
    audit_log: AuditLog
    if audit.backend == "redis":
        audit_log = RedisAuditLog(settings.store, settings.store.key_prefix, tasks=tasks)
    else:
        audit_log = FileAuditLog(
            settings.path(audit.dir),
            fsync=audit.fsync,
            staged=audit.durable_before == "reply",
            zeros=audit.zero_ahead,
            tasks=tasks,
        )
    # Stable across restarts (broker.audit.replica_id), so a restarted broker continues its chain.
    replica = audit.replica or claim_default_replica(settings.server.port)
    witness = open_witness(settings)
    trail = await AuditTrail.open(
        audit_log, replica, keys, audit.checkpoint_every, audit.checkpoint_interval_s,
        witness=WitnessWriter(witness, tasks) if witness else None,
    )  # fmt: skip
    log.info("audit chain %s on the %s log, witnessed by %s", replica, audit.backend,
             type(witness).__name__ if witness else "nothing")  # fmt: skip
    return AuditRecorder(trail, frozenset(audit.payload_agents), tasks)


def open_witness(settings: Settings) -> Witness | None:
    """The witness ``[audit] witness`` names (``auto``: see the setting), or None."""
    audit, store = settings.audit, settings.store
    kind = audit.witness
    if kind == "auto":
        kind = "redis" if store.backend == "redis" and audit.backend == "file" else "file"
    if kind == "off":
        log.warning("[audit] witness = off: a cut-off tail of the log can go unseen")
        return None
    if kind == "redis":
        return RedisWitness(store, store.key_prefix)
    return FileWitness(settings.path(audit.witness_dir))
