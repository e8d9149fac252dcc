"""The few types every stage shares: the mediation context, outcomes and the stage signature."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import msgspec

from broker.errors import BrokerError

if TYPE_CHECKING:
    from broker.delegation.tokens import DelegationClaims
    from broker.reading import Reading
from broker.operations import Operation
from broker.stores.base import AgentRecord

Binding = Literal["jsonrpc", "rest"]


@dataclass(slots=True)
class MediationContext:
    """What one mediated request has learnt so far. Built by the edge, filled in by stages."""

    binding: Binding
    target_name: str
    http_method: str
    headers: Mapping[str, str]  # inbound headers, lower-case names
    read_body: Callable[[], Awaitable[bytes]]
    rest_tail: str = ""  # REST: the path after /rest, tenant prefix included
    query_string: str = ""
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.perf_counter)
    # Learnt by the stages:
    caller: str | None = None
    body: bytes = b""
    operation: Operation | None = None
    jsonrpc_id: msgspec.Raw | None = None
    params: msgspec.Raw | None = None
    task_id: str | None = None
    target: AgentRecord | None = None
    skill: str = ""
    reading: Reading | None = None  # what the broker judged in the parameters (ReadParams)
    deadline_s: float | None = None  # the A2A-Deadline the caller asked for
    # Delegation: the verified token the caller presented (None: it originates work), the chain
    # of callers including this one (origin first), and the token minted for the target.
    parent: DelegationClaims | None = None
    chain: tuple[str, ...] = ()
    hop_token: str = ""
    hop: DelegationClaims | None = None
    policy_rule: str = ""
    policy_version: str = ""  # the policy that decided this request (audit: detail.policy_version)
    upstream_status: int | None = None
    upstream_s: float = 0.0  # waited for the agent's answer (unary; metrics: broker-added time)
    error: BrokerError | None = None
    audited: bool = False  # the audit stage has recorded this request's outcome
    body_digest: str = ""  # computed once, for the audit's decision and outcome records


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete answer: status, headers, body bytes."""

    status: int
    body: bytes
    media_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamReply:
    """A streamed (SSE) answer: the events are produced as the upstream sends them."""

    events: AsyncIterator[bytes]
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


Outcome = Reply | StreamReply
CallNext = Callable[["MediationContext"], Awaitable[Outcome]]
Stage = Callable[["MediationContext", CallNext], Awaitable[Outcome]]
