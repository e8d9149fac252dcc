"""The few types every stage shares: the call context, outcomes and the stage signature.

``CallContext`` is what every mediated call has, whatever its protocol; each protocol's context
extends it (``MediationContext`` for A2A here, ``broker.llm.context.LlmContext`` for LLM calls).
The stages every protocol shares (authenticate, delegation context, kill switch, guards) are
written once over ``CallContext``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec

from broker.errors import BrokerError
from broker.ids import new_id

if TYPE_CHECKING:  # annotations only: the types every stage shares import no broker layer
    from broker.datacontrols.redact import Placeholders
    from broker.delegation.tokens import DelegationClaims
    from broker.protocols.a2a.operations import Operation
    from broker.protocols.a2a.reading import Reading

Binding = Literal["jsonrpc", "rest"]
AgentStatus = Literal["active", "suspended"]


class AgentRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A registered agent. ``card_json`` is the validated card, normalised to A2A 1.0."""

    name: str
    card_json: str
    status: AgentStatus = "active"
    # Upstream endpoints taken from the card, one per binding the broker can relay (may be "").
    jsonrpc_url: str = ""
    rest_url: str = ""
    source: Literal["api", "declarative"] = "api"
    card_url: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(slots=True, kw_only=True)
class CallContext:
    """What one mediated call has learnt so far, whatever its protocol. Built by the edge,
    filled in by the stages; stages keep no per-call state of their own."""

    headers: Mapping[str, str]  # inbound headers, lower-case names
    read_body: Callable[[], Awaitable[bytes]]
    request_id: str = field(default_factory=new_id)
    started: float = field(default_factory=time.perf_counter)
    # Learnt by the shared stages: who calls (authenticate), the verified token it presented
    # (None: it originates work) and the chain of callers including itself, origin first
    # (delegation context), the rule and policy version that allowed it (policy).
    caller: str | None = None
    parent: DelegationClaims | None = None
    chain: tuple[str, ...] = ()
    # The presented token is not yet checked for revocation: the guards check it in their fan-out
    # slot's round trip (``broker.stages.delegation``), before anything can leave.
    revocation_unchecked: bool = False
    # Checks still under way (the guards' fan-out slot, taken while later stages run): raises
    # their refusal; awaited before anything leaves (the budget stage).
    pending_checks: Callable[[], Awaitable[None]] | None = None
    # Told when the agent's unary answer is in, before it is inspected (the task route's claim):
    # the guards release their fan-out slot then, in the claim's round trip.
    on_answer: Callable[[], None] | None = None
    # Told once a send's unary answer has passed its check, just before its task route (if it
    # names a task) is claimed: the budget stage starts its settle then, so the settle goes out
    # in the claim's round trip (decision 0078).
    on_answer_checked: Callable[[], None] | None = None
    policy_rule: str = ""
    policy_version: str = ""  # the policy that decided this call (audit: detail.policy_version)
    # The approve rule (or threshold) that holds this call for a human ("": none), set by the
    # policy stage; and the approval it goes ahead under once approved (the approval stage).
    approval_rule: str = ""
    approval_id: str = ""
    upstream_status: int | None = None
    upstream_s: float = 0.0  # waited for the agent's answer (unary; metrics: broker-added time)
    error: BrokerError | None = None
    audited: bool = False  # the audit stage has recorded this call's outcome
    # The call's trace (broker.observability.tracing): the caller's or a new trace id, the
    # broker's span id that is passed on as the upstream's parent, the W3C flags, and the
    # OpenTelemetry span while it is recorded (None when spans are off).
    trace_id: str = ""
    span_id: str = ""
    trace_flags: str = "01"
    span: Any = None
    # Learnt by the data controls (broker.stages.datacontrols), when they are on: per direction
    # ("request", "response") and type, how many values were found and the action taken (never
    # a value); the tags the work carries after this hop (its parent's plus those found); the
    # call's placeholders, which hold its pseudonyms in memory for the call only.
    data_found: dict[str, dict[str, tuple[int, str]]] | None = None
    data_tags: tuple[str, ...] = ()
    placeholders: Placeholders | None = None


@dataclass(slots=True)
class MediationContext(CallContext):
    """What one mediated A2A request has learnt so far."""

    binding: Binding
    target_name: str
    http_method: str
    rest_tail: str = ""  # REST: the path after /rest, tenant prefix included
    query_string: str = ""
    # Learnt by the stages:
    body: bytes = b""
    operation: Operation | None = None
    jsonrpc_id: msgspec.Raw | None = None
    params: msgspec.Raw | None = None
    task_id: str | None = None
    target: AgentRecord | None = None
    skill: str = ""
    reading: Reading | None = None  # what the broker judged in the parameters (ReadParams)
    deadline_s: float | None = None  # the A2A-Deadline the caller asked for
    # The token minted for the target, and its claims.
    hop_token: str = ""
    hop: DelegationClaims | None = None
    body_digest: str = ""  # computed once, for the audit's decision and outcome records
    # The broker's approval task this request named, when it was pointed at the agent's task
    # (``task_id``) that the approved call started (broker.approvals.continued).
    approval_task: str = ""


class Reply(msgspec.Struct, frozen=True):
    """A complete answer: status, headers, body bytes.

    A Struct, not a frozen dataclass: two are made per unary request (the agent's answer, then
    the boundary's with the request id), and a frozen dataclass sets each field through
    ``object.__setattr__``."""

    status: int
    body: bytes
    media_type: str = "application/json"
    headers: Mapping[str, str] = msgspec.field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamReply:
    """A streamed (SSE) answer: the events are produced as the upstream sends them."""

    events: AsyncIterator[bytes]
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


Outcome = Reply | StreamReply
# The A2A pipeline's signatures; ``broker.pipeline.stage`` has the generic contract.
CallNext = Callable[["MediationContext"], Awaitable[Outcome]]
Stage = Callable[["MediationContext", CallNext], Awaitable[Outcome]]
Ctx = TypeVar("Ctx", bound=CallContext)
