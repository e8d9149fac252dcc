"""What one LLM call has learnt so far, and how its stages are composed."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from broker.errors import BrokerError
from broker.pipeline import fold
from broker.types import Outcome

if TYPE_CHECKING:
    from broker.budgets import Usage
    from broker.delegation.tokens import DelegationClaims
    from broker.llm.config import ModelRoute
    from broker.llm.request import LlmRequest
    from broker.llm.usage import StreamMeter

CallKind = Literal["chat", "embeddings"]


@dataclass(slots=True)
class LlmContext:
    """Built by the route, filled in by the stages (like ``MediationContext``)."""

    kind: CallKind
    headers: Mapping[str, str]  # lower-case names
    read_body: Callable[[], Awaitable[bytes]]
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.perf_counter)
    # Learnt by the stages:
    caller: str | None = None
    request: LlmRequest | None = None
    route: ModelRoute | None = None
    parent: DelegationClaims | None = None  # the verified A2A-Delegation token, if any
    chain: tuple[str, ...] = ()
    policy_rule: str = ""
    policy_version: str = ""  # the policy that decided this call (audit: detail.policy_version)
    worst_case: Usage | None = None
    # Set by forwarding: the actual usage of a unary answer (None: nothing to charge), or the
    # meter that counts a stream's usage as it passes.
    usage: Usage | None = None
    meter: StreamMeter | None = None
    upstream_status: int | None = None
    error: BrokerError | None = None
    audited: bool = False  # the forward's outcome is recorded already

    @property
    def tree(self) -> str | None:
        """The task tree the call is charged to as well, when made under delegation."""
        return self.parent.tree if self.parent is not None else None


LlmCallNext = Callable[[LlmContext], Awaitable[Outcome]]
LlmStage = Callable[[LlmContext, LlmCallNext], Awaitable[Outcome]]


def fold_llm(stages: Sequence[LlmStage]) -> LlmCallNext:
    """The LLM stages composed (``broker.pipeline.fold``, shared with the A2A pipeline)."""
    return fold(stages)


async def close_events(events: AsyncIterator[bytes]) -> None:
    """Close a stream's generator now (and so its upstream), not when it is collected."""
    if isinstance(events, AsyncGenerator):
        await events.aclose()
