"""The records the audit stage writes for a request are the bytes of the straightforward build.

Decision 0099 took copies, futures and checks off the stage's path (the fields are no longer
copied to drop their ``_body``, a log that does not stage hands back no future). The reference
here is that path as it was: every record's fields built by ``request_fields`` as then (with
its ``list`` of the chain), copied without ``_body`` and given the payload and policy version
by copies of their own, and sealed by a chain of its own with the same clock. For any request
(caller, chain, hop token, policy version or none, approvals, trace, data found, error or none,
body, answer), any ``[audit] payload_agents`` and the policy version in force, the decision
and outcome lines of a forwarded request, or the line of a refused one, are the same bytes.
"""

from __future__ import annotations

import asyncio
import copy
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.audit.chain import AuditChain
from broker.audit.file_log import FileAuditLog
from broker.audit.recorder import AuditRecorder, data_detail, digest, error_detail
from broker.audit.records import encode_record
from broker.audit.redact import redacted_payload
from broker.audit.trail import AuditTrail
from broker.delegation.tokens import Actor, DelegationClaims
from broker.errors import BrokerError, BudgetExhaustedError, UnauthenticatedError
from broker.identity.keys import BrokerKeys
from broker.protocols.a2a.operations import SEND_MESSAGE
from broker.stages.audit import A2aAudit, AuditForward
from broker.types import MediationContext, Outcome, Reply

KEYS = BrokerKeys(Ed25519PrivateKey.generate())
NOW_US = 1_760_000_000_000_000
NOW_S = 5_000.0
_AUTH_REFUSALS = (UnauthenticatedError,)

names = st.sampled_from(["a", "b", "planner", "writer", "ü-agent"])
texts = st.text(max_size=12)
ids = st.text(alphabet="abcdef0123456789", min_size=1, max_size=26)


def reference_fields(
    ctx: MediationContext, phase: str, status: int, answer: str = ""
) -> dict[str, Any]:
    """``request_fields`` as it was before decision 0099."""
    err = ctx.error
    tree = ctx.hop.tree if ctx.hop else ctx.parent.tree if ctx.parent else ""
    detail: dict[str, Any] = {"phase": phase, "binding": ctx.binding}
    if ctx.task_id:
        detail["task_id"] = ctx.task_id
    if ctx.hop is not None:
        detail["token.jti"], detail["token.exp"] = ctx.hop.jti, ctx.hop.exp
    if ctx.policy_version:
        detail["policy_version"] = ctx.policy_version
    if ctx.approval_id:
        detail["approval"] = ctx.approval_id
    if ctx.approval_task:
        detail["approval_task"] = ctx.approval_task
    if ctx.trace_id:
        detail["trace_id"] = ctx.trace_id
    if err is not None:
        detail.update(error_detail(err))
    if ctx.data_found or ctx.data_tags:
        detail.update(data_detail(ctx))
    fields: dict[str, Any] = {
        "kind": "auth.failure" if isinstance(err, _AUTH_REFUSALS) else "request",
        "request_id": ctx.request_id, "caller": ctx.caller or "", "chain": list(ctx.chain),
        "tree": tree, "target": ctx.target_name,
        "operation": ctx.operation.name if ctx.operation else "", "skill": ctx.skill,
        "decision": "deny" if err is not None and phase == "refused" else "allow",
        "reason": err.reason if err is not None else "", "rule": ctx.policy_rule,
        "status": status, "latency_us": int((time.perf_counter() - ctx.started) * 1_000_000),
        "request_digest": digest(ctx.body), "response_digest": answer, "detail": detail,
    }  # fmt: skip
    if phase != "outcome" and ctx.body:
        fields["_body"] = ctx.body
    return fields


def reference_recorded(
    fields: Mapping[str, Any], agents: frozenset[str], version: str
) -> Mapping[str, Any]:
    """``AuditRecorder._with_payload`` as it was before decision 0099: copies, never in place."""
    detail = fields.get("detail") or {}
    kinds = ("request", "auth.failure")
    if fields.get("kind") in kinds and "policy_version" not in detail and version:
        fields = {**fields, "detail": {**detail, "policy_version": version}}
    if "_body" not in fields:
        return fields
    kept = dict(fields)
    body = kept.pop("_body")
    if body and agents and agents & {kept.get("caller", ""), kept.get("target", "")}:
        kept["detail"] = {**kept.get("detail", {}), "payload": redacted_payload(body)}
    return kept


@st.composite
def contexts(draw: st.DrawFn) -> MediationContext:
    caller = draw(names)
    chain = (*draw(st.lists(names, max_size=3)), caller)
    ctx = MediationContext(
        draw(st.sampled_from(["jsonrpc", "rest"])), draw(names), "POST", headers={},
        read_body=_no_body, caller=caller, chain=chain, started=NOW_S - 0.25,
        request_id=draw(ids),
    )  # fmt: skip
    ctx.body = draw(st.one_of(st.just(b""), st.binary(max_size=40), st.just(b'{"a":"b@c.de"}')))
    ctx.operation = draw(st.sampled_from([None, SEND_MESSAGE]))
    ctx.skill = draw(st.sampled_from(["", "summarise"]))
    ctx.task_id = draw(st.one_of(st.none(), ids))
    ctx.policy_version = draw(st.sampled_from(["", "none", "v1-abc"]))
    ctx.policy_rule = draw(st.sampled_from(["", "allow-planner"]))
    ctx.approval_id = draw(st.sampled_from(["", "ap1"]))
    ctx.approval_task = draw(st.sampled_from(["", "bt1"]))
    ctx.trace_id = draw(st.sampled_from(["", "0af7651916cd43dd8448eb211c80319c"]))
    if draw(st.booleans()):
        ctx.hop = DelegationClaims(
            iss="http://broker.test", aud=ctx.target_name, sub=chain[0], act=Actor(sub=caller),
            chain=chain, tree=draw(ids), depth=len(chain), scope="a2a:SendMessage",
            jti=draw(ids), iat=1, exp=draw(st.integers(0, 2**40)), dl=2.0,
        )  # fmt: skip
    if draw(st.booleans()):
        ctx.data_found = {"request": {"pii:email": (draw(st.integers(1, 3)), "tag")}}
        ctx.data_tags = ("pii:email",)
    return ctx


async def _no_body() -> bytes:
    return b""


errors = st.one_of(
    st.none(),
    st.builds(UnauthenticatedError, detail=st.one_of(st.none(), texts)),
    st.builds(
        BudgetExhaustedError,
        detail=st.one_of(st.none(), texts),
        metadata=st.dictionaries(st.sampled_from(["budget", "Limit-Key", "x y"]), texts),
    ),
)


async def _records_written(
    ctx: MediationContext, agents: frozenset[str], version: str, ending: Any, directory: Path
) -> tuple[list[bytes], list[bytes]]:
    """The lines the stage (or, for a refusal, the boundary's call) writes for ``ctx``, and the
    reference's for the same request."""
    chain = AuditChain("r1", KEYS, clock_us=lambda: NOW_US)
    recorder = AuditRecorder(AuditTrail(FileAuditLog(directory, fsync=False), chain), agents)
    recorder.policy_version = lambda: version
    reference = AuditChain("r1", KEYS, clock_us=lambda: NOW_US)
    expected: list[bytes] = []

    def sealed(fields: dict[str, Any]) -> None:
        record = reference.seal(reference_recorded(fields, agents, version))
        expected.append(encode_record(record))

    if ending == "refused":
        ctx.error = BudgetExhaustedError(detail="over", metadata={"budget": "calls"})
        sealed(reference_fields(copy.copy(ctx), "refused", 200))
        await recorder.record(A2aAudit().refusal(ctx, 200))
    else:
        sealed(reference_fields(copy.copy(ctx), "forward", 0))

        async def answered(_: MediationContext) -> Outcome:
            if isinstance(ending, BrokerError):
                raise ending
            return Reply(200, ending)

        try:
            await AuditForward[MediationContext](recorder, A2aAudit())(ctx, answered)
        except BrokerError as err:
            sealed(reference_fields(ctx, "outcome", err.http_status))
        else:
            sealed(reference_fields(ctx, "outcome", 200, digest(ending)))
    await recorder.close()
    lines = (directory / "audit-r1.jsonl").read_bytes().splitlines()
    return lines[: len(expected)], expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ctx=contexts(),
    agents=st.frozensets(st.sampled_from(["a", "b", "planner", "other"]), max_size=2),
    version=st.sampled_from(["", "v-in-force"]),
    ending=st.one_of(st.just("refused"), st.binary(max_size=30), errors.filter(bool)),
)
def test_a_requests_records_are_the_bytes_of_the_reference_build(
    ctx: MediationContext, agents: frozenset[str], version: str, ending: Any
) -> None:
    with tempfile.TemporaryDirectory() as scratch, mock.patch("time.perf_counter", lambda: NOW_S):
        written, expected = asyncio.run(
            _records_written(ctx, agents, version, ending, Path(scratch))
        )
    assert written == expected
