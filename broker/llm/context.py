"""What one LLM call has learnt so far (a ``CallContext``), and its stages' signature."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from broker.pipeline.stage import fold
from broker.types import CallContext, Outcome

if TYPE_CHECKING:
    from broker.budgets.model import Usage
    from broker.protocols.llm.catalog import ModelRoute
    from broker.protocols.llm.request import LlmRequest
    from broker.protocols.llm.usage import StreamMeter

CallKind = Literal["chat", "embeddings"]


@dataclass(slots=True)
class LlmContext(CallContext):
    """What one LLM call has learnt so far: the shared ``CallContext`` and the LLM's own."""

    kind: CallKind
    # Learnt by the stages:
    request: LlmRequest | None = None
    route: ModelRoute | None = None
    worst_case: Usage | None = None
    # Set by forwarding: the actual usage of a unary answer (None: nothing to charge), or the
    # meter that counts a stream's usage as it passes.
    usage: Usage | None = None
    meter: StreamMeter | None = None

    @property
    def tree(self) -> str | None:
        """The task tree the call is charged to as well, when made under delegation."""
        return self.parent.tree if self.parent is not None else None


LlmCallNext = Callable[[LlmContext], Awaitable[Outcome]]
LlmStage = Callable[[LlmContext, LlmCallNext], Awaitable[Outcome]]


def fold_llm(stages: Sequence[LlmStage]) -> LlmCallNext:
    """The LLM stages composed (``broker.pipeline.stage.fold``, shared with the A2A pipeline)."""
    return fold(stages)
