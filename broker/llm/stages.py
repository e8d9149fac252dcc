"""The LLM call's own stages (the shared ones are in ``broker.stages``).

The order they run in is written in ``broker.pipeline.llm``.
"""

from __future__ import annotations

import logging
from functools import partial

from broker.errors import BrokerError
from broker.llm.context import LlmCallNext, LlmContext
from broker.llm.errors import LlmModelNotAllowedError, LlmModelNotFoundError, LlmRateLimitedError
from broker.observability.record import observe_llm_call
from broker.pipeline.stage import after_reply
from broker.policy.decision import NO_POLICY_VERSION
from broker.policy.engine import PolicyEngine
from broker.protocols.llm.catalog import ModelCatalog
from broker.protocols.llm.request import parse_request
from broker.protocols.llm.wire import openai_error_reply
from broker.settings import LimitSettings
from broker.settings_llm import LlmSettings
from broker.stages.boundary import log_call as shared_log_call
from broker.stores.budget_base import RateLimiter
from broker.types import Outcome, Reply, StreamReply

log = logging.getLogger("a2a_broker.access")
ACTIONS = {"chat": "llm:chat", "embeddings": "llm:embeddings"}


class LlmWire:
    """The LLM endpoint's ends, for the shared ``broker.stages.boundary.ErrorBoundary``: every
    refusal an OpenAI-shaped error (its status the error's HTTP status), every call one
    ``llm_call`` log line when its answer starts."""

    unexpected = "in LLM call"

    def refusal(self, ctx: LlmContext, err: BrokerError) -> Reply:
        return openai_error_reply(err)

    def finish(self, ctx: LlmContext, outcome: Outcome) -> Outcome:
        log_call(ctx, outcome.status, stream=isinstance(outcome, StreamReply))
        return outcome


def log_call(ctx: LlmContext, status: int, *, stream: bool) -> None:
    """The call's metrics now; its log line, for a unary answer, once the answer is on its way
    (decision 0106)."""
    observe_llm_call(ctx, status)  # the call's metrics
    if not log.isEnabledFor(logging.INFO):
        return
    if stream:
        _log_call(ctx, status, stream=True)
    else:
        after_reply(partial(_log_call, ctx, status, stream=False))


def _log_call(ctx: LlmContext, status: int, *, stream: bool) -> None:
    own: dict[str, object] = {
        "kind": ctx.kind,
        "model": ctx.request.model if ctx.request else None,
        "tree": ctx.tree,
        "stream": stream,
    }
    shared_log_call(ctx, "llm_call", status, own)


class ParseLlmRequest:
    """Body limits, the envelope, and the model's provider (unknown model: 404)."""

    def __init__(self, limits: LimitSettings, llm: LlmSettings, catalog: ModelCatalog) -> None:
        self._limits = limits
        self._llm = llm
        self._catalog = catalog

    async def __call__(self, ctx: LlmContext, call_next: LlmCallNext) -> Outcome:
        ctx.request = parse_request(
            ctx.kind,
            await ctx.read_body(),
            max_depth=self._limits.max_json_depth,
            default_max_tokens=self._llm.default_max_tokens,
            max_tokens_limit=self._llm.max_tokens_limit,
        )
        ctx.route = self._catalog.route(ctx.request.model)
        if ctx.route is None:
            raise LlmModelNotFoundError(
                f"The model {ctx.request.model!r} does not exist or is not served here."
            )
        return await call_next(ctx)


class ModelPolicy:
    """May the caller (and, down a chain, its origin) use this model? No policy: yes."""

    def __init__(self, engine: PolicyEngine | None) -> None:
        self._engine = engine

    async def __call__(self, ctx: LlmContext, call_next: LlmCallNext) -> Outcome:
        assert ctx.request is not None  # noqa: S101 - parsed earlier
        # Read with the decision below, with no await between: a reload cannot slip in.
        ctx.policy_version = self._engine.version if self._engine else NO_POLICY_VERSION
        if self._engine is not None:
            target = f"model:{ctx.request.model}"
            decision = self._engine.decide_chain(ctx.chain, target, ACTIONS[ctx.kind])
            if not decision.allowed:
                raise LlmModelNotAllowedError(
                    f"Policy does not allow {ctx.caller} to use the model {ctx.request.model!r}.",
                    metadata={"decision": decision.reason, "principal": decision.principal},
                )
            ctx.policy_rule = decision.rule.text if decision.rule else ""
            ctx.approval_rule = decision.approval.text if decision.approval else ""
        return await call_next(ctx)


class AgentRateLimit:
    """Calls per agent (key ``llm:agent:<name>``); 0 rate disables it."""

    def __init__(self, limiter: RateLimiter, llm: LlmSettings) -> None:
        self._limiter = limiter
        self._rate = llm.rate_per_s
        self._burst = llm.burst

    @property
    def passes_through(self) -> bool:
        """No rate (0) checks nothing: ``fold`` leaves the stage out."""
        return self._rate <= 0

    async def __call__(self, ctx: LlmContext, call_next: LlmCallNext) -> Outcome:
        if self._rate > 0:
            key = f"llm:agent:{ctx.caller}"
            wait = await self._limiter.acquire(key, rate_per_s=self._rate, burst=self._burst)
            if wait > 0:
                raise LlmRateLimitedError(retry_after=wait)
        return await call_next(ctx)
