"""The one error boundary of every protocol: a refusal is answered in the protocol's shape and
recorded once, in the protocol's record, with the status the caller saw."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import pytest
import stage_kit

from broker.audit.recorder import AuditRecorder
from broker.errors import (
    AuditUnavailableError,
    BrokerError,
    PolicyDeniedError,
)
from broker.llm.audit import LlmAudit
from broker.llm.context import LlmContext
from broker.llm.stages import LlmWire
from broker.stages.audit import A2aAudit
from broker.stages.boundary import A2aWire, ErrorBoundary
from broker.types import CallContext, MediationContext, Outcome, Reply


class Recorded(AuditRecorder):
    """Keeps what would be appended; ``failing``: the log cannot be written."""

    def __init__(self, *, failing: bool = False) -> None:
        super().__init__(None)
        self.records: list[Mapping[str, Any]] = []
        self._failing = failing

    async def record(self, fields: Mapping[str, Any]) -> None:
        if self._failing:
            raise AuditUnavailableError()
        self.records.append(fields)


def _a2a() -> tuple[MediationContext, ErrorBoundary[MediationContext]]:
    return stage_kit.ctx(), ErrorBoundary[MediationContext](RECORDER, A2aAudit(), A2aWire())


def _llm() -> tuple[LlmContext, ErrorBoundary[LlmContext]]:
    ctx = LlmContext(kind="chat", headers={}, read_body=stage_kit.no_body, caller="a")
    return ctx, ErrorBoundary[LlmContext](RECORDER, LlmAudit(), LlmWire())


RECORDER = Recorded()


def _refusing(err: Exception) -> Any:
    async def call_next(ctx: CallContext) -> Outcome:
        raise err

    return call_next


@pytest.fixture(autouse=True)
def _fresh() -> None:
    RECORDER.records.clear()


async def test_an_a2a_refusal_is_recorded_once_with_the_status_the_caller_saw() -> None:
    ctx, boundary = _a2a()
    reply = await boundary(ctx, _refusing(PolicyDeniedError()))
    assert isinstance(reply, Reply) and reply.status == 200  # a JSON-RPC error
    assert msgspec.json.decode(reply.body)["error"]["code"] == PolicyDeniedError.code
    [record] = RECORDER.records
    assert record["status"] == 200 and record["decision"] == "deny"
    assert record["detail"]["phase"] == "refused" and record["reason"] == "POLICY_DENIED"
    assert record["operation"] == "SendMessage"


async def test_an_llm_refusal_is_recorded_once_in_the_llm_record() -> None:
    ctx, boundary = _llm()
    reply = await boundary(ctx, _refusing(PolicyDeniedError()))
    assert isinstance(reply, Reply) and reply.status == 403  # OpenAI clients map the status
    assert "error" in msgspec.json.decode(reply.body)
    [record] = RECORDER.records
    assert record["status"] == 403 and record["decision"] == "deny"
    assert record["operation"] == "llm:chat" and record["detail"]["binding"] == "openai"
    assert record["detail"]["phase"] == "refused" and record["reason"] == "POLICY_DENIED"


@pytest.mark.parametrize("protocol", [_a2a, _llm])
async def test_an_unexpected_error_is_an_internal_error_and_still_recorded(protocol: Any) -> None:
    ctx, boundary = protocol()
    await boundary(ctx, _refusing(RuntimeError("secret internals")))
    [record] = RECORDER.records
    assert record["reason"] == "INTERNAL_ERROR"
    assert "secret internals" not in msgspec.json.encode(record).decode()


@pytest.mark.parametrize("protocol", [_a2a, _llm])
async def test_a_refusal_already_audited_or_of_the_audit_log_itself_is_not_recorded_again(
    protocol: Any,
) -> None:
    ctx, boundary = protocol()
    ctx.audited = True  # the forward's audit recorded its outcome already
    await boundary(ctx, _refusing(PolicyDeniedError()))
    ctx, boundary = protocol()
    await boundary(ctx, _refusing(AuditUnavailableError()))
    assert RECORDER.records == []


@pytest.mark.parametrize("protocol", [_a2a, _llm])
async def test_a_refusal_the_audit_log_cannot_take_is_still_answered_as_itself(
    protocol: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, boundary = protocol()
    monkeypatch.setattr(boundary, "_recorder", Recorded(failing=True))
    await boundary(ctx, _refusing(PolicyDeniedError()))
    assert isinstance(ctx.error, BrokerError) and ctx.error.reason == "POLICY_DENIED"
