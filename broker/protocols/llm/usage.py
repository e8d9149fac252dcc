"""What a call used: read from the provider's ``usage``, or counted from the answer's text.

Counting is the fallback when a provider reports nothing: input tokens are the reserve's
estimate from the request, output tokens the answer's text bytes over ``bytes_per_token``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from broker.budgets.model import Usage
from broker.protocols.llm.catalog import ModelRoute
from broker.protocols.llm.request import LlmRequest, estimate_tokens
from broker.protocols.sse import event_data


class _Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Message(msgspec.Struct, frozen=True):
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: msgspec.Raw | None = None


class _Choice(msgspec.Struct, frozen=True):
    message: _Message | None = None
    delta: _Message | None = None


class _Answer(msgspec.Struct, frozen=True):
    usage: _Usage | None = None
    choices: list[_Choice] | None = None


_answer = msgspec.json.Decoder(_Answer)


def worst_case(request: LlmRequest, route: ModelRoute, bytes_per_token: float) -> Usage:
    """What the call may cost at most: one call, the prompt's estimate, every output token."""
    tokens_in = estimate_tokens(request.prompt_bytes, bytes_per_token)
    tokens_out = request.max_output_tokens
    return _usage(route, tokens_in, tokens_out)


def unary_usage(body: bytes, worst: Usage, route: ModelRoute, bytes_per_token: float) -> Usage:
    """The usage of a complete answer (chat completion or embeddings)."""
    answer = _decode(body)
    if answer is not None and answer.usage is not None:
        reported = answer.usage
        return _usage(route, reported.prompt_tokens, reported.completion_tokens)
    text = sum(_text_bytes(c.message) for c in (answer.choices or [])) if answer else 0
    return _usage(route, worst.tokens_in, estimate_tokens(text, bytes_per_token))


class StreamMeter:
    """Watches a chat stream's events: the final usage chunk, or the text to count."""

    def __init__(self, worst: Usage, route: ModelRoute, bytes_per_token: float) -> None:
        self._worst = worst
        self._route = route
        self._bytes_per_token = bytes_per_token
        self._reported: _Usage | None = None
        self._text_bytes = 0
        self.events = 0

    def observe(self, event: bytes) -> bool:
        """Take note of one SSE event; False if it is the usage-only chunk (for callers that
        did not ask for usage, it is not relayed)."""
        data = event_data(event)
        if not data or data.startswith(b"[DONE]"):
            return True
        answer = _decode(data)
        if answer is None:
            return True
        self.events += 1
        for choice in answer.choices or []:
            self._text_bytes += _text_bytes(choice.delta)
        if answer.usage is not None:
            self._reported = answer.usage
            return bool(answer.choices)
        return True

    @property
    def started(self) -> bool:
        """Did the provider produce anything (so that it charges for the call)?"""
        return self.events > 0

    def usage(self) -> Usage:
        if self._reported is not None:
            reported = self._reported
            return _usage(self._route, reported.prompt_tokens, reported.completion_tokens)
        tokens_out = estimate_tokens(self._text_bytes, self._bytes_per_token)
        return _usage(self._route, self._worst.tokens_in, tokens_out)


def _usage(route: ModelRoute, tokens_in: int, tokens_out: int) -> Usage:
    tokens_in, tokens_out = max(0, tokens_in), max(0, tokens_out)
    return Usage(
        calls=1,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        cost_micro=route.cost_micro(tokens_in, tokens_out),
    )


def _decode(data: bytes) -> _Answer | None:
    try:
        return _answer.decode(data)
    except msgspec.DecodeError:
        return None


def _text_bytes(message: _Message | None) -> int:
    if message is None:
        return 0
    parts: list[Any] = [message.content, message.reasoning_content]
    text = sum(len(p.encode()) for p in parts if isinstance(p, str))
    return text + (len(message.tool_calls) if message.tool_calls is not None else 0)
