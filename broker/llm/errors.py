"""Refusals of the LLM endpoint (codes -32100..-32119), BrokerError subclasses like every other.

How each one looks to an OpenAI client (status, ``type``, ``code``) is in
``broker.protocols.llm.wire``.
"""

from __future__ import annotations

from broker.errors import BrokerError


class LlmModelNotFoundError(BrokerError):
    code, http_status, reason = -32100, 404, "LLM_MODEL_NOT_FOUND"
    default_message = "The broker serves no model of that name."


class LlmModelNotAllowedError(BrokerError):
    code, http_status, reason = -32101, 403, "LLM_MODEL_NOT_ALLOWED"
    default_message = "Policy does not allow this agent to use this model."


class LlmBudgetExhaustedError(BrokerError):
    """Not retryable: the budget named in the message must be raised or its window pass."""

    code, http_status, reason = -32102, 429, "LLM_BUDGET_EXHAUSTED"
    default_message = "A budget does not cover this call."


class LlmRateLimitedError(BrokerError):
    code, http_status, reason = -32103, 429, "LLM_RATE_LIMITED"
    retryable = True
    default_retry_after = 1.0
    default_message = "Too many LLM calls from this agent; retry after the delay given."


class LlmInvalidRequestError(BrokerError):
    code, http_status, reason = -32104, 400, "LLM_INVALID_REQUEST"
    default_message = "The request is not a valid OpenAI API request."


class LlmProviderError(BrokerError):
    code, http_status, reason = -32105, 502, "LLM_PROVIDER_ERROR"
    retryable = True
    default_message = "The model provider failed to answer."


class LlmProviderTimeoutError(BrokerError):
    code, http_status, reason = -32106, 504, "LLM_PROVIDER_TIMEOUT"
    retryable = True
    default_message = "The model provider did not answer in time."


class LlmProviderRateLimitedError(BrokerError):
    code, http_status, reason = -32107, 429, "LLM_PROVIDER_RATE_LIMITED"
    retryable = True
    default_retry_after = 1.0
    default_message = "The model provider is rate limiting the broker; retry shortly."
