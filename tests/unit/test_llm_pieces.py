"""The LLM endpoint's pure pieces: request parsing, usage, cost, config, error wire shapes."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.errors import JSONParseError, JSONTooDeepError, all_error_types
from broker.llm import errors as llm_errors
from broker.llm.errors import LlmBudgetExhaustedError, LlmInvalidRequestError, LlmRateLimitedError
from broker.protocols.llm.catalog import ModelCatalog
from broker.protocols.llm.request import parse_request
from broker.protocols.llm.usage import StreamMeter, unary_usage, worst_case
from broker.protocols.llm.wire import openai_error_event, openai_error_reply
from broker.settings_llm import LlmConfigError, LlmProvider, LlmSettings, resolve_llm_settings

PROVIDER = LlmProvider(
    base_url="http://p/v1", models=("m",), price_in_per_mtok=2.5, price_out_per_mtok=10.0
)
ROUTE = ModelCatalog(LlmSettings(providers={"p": PROVIDER})).route("m")


def _chat(**fields: object) -> bytes:
    return json.dumps({"model": "m", "messages": [], **fields}).encode()


def _parse(body: bytes, kind: str = "chat", limit: int = 0):  # type: ignore[no-untyped-def]
    return parse_request(kind, body, max_depth=8, default_max_tokens=100, max_tokens_limit=limit)  # type: ignore[arg-type]


def test_unary_body_is_forwarded_as_sent() -> None:
    body = _chat(max_tokens=7, n=2, extra={"kept": True})
    request = _parse(body)
    assert request.body == body and not request.stream
    assert request.max_output_tokens == 14


def test_stream_asks_for_usage_and_remembers_whether_the_caller_did() -> None:
    request = _parse(_chat(stream=True, stream_options={"x": 1}))
    assert json.loads(request.body)["stream_options"] == {"x": 1, "include_usage": True}
    assert not request.wants_usage and request.max_output_tokens == 100
    asked = _chat(stream=True, stream_options={"include_usage": True})
    assert _parse(asked).body == asked and _parse(asked).wants_usage


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", JSONParseError),
        (b'{"model": "m", "x": [[[[[[[[[[1]]]]]]]]]]}', JSONTooDeepError),
        (_chat(max_tokens=0), LlmInvalidRequestError),
        (_chat(max_tokens="many"), LlmInvalidRequestError),
        (json.dumps({"model": ""}).encode(), LlmInvalidRequestError),
        (_chat(max_tokens=500), LlmInvalidRequestError),
    ],
)
def test_bad_requests_are_refused(body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        _parse(body, limit=200)


def test_invalid_field_is_named_as_param() -> None:
    with pytest.raises(LlmInvalidRequestError) as caught:
        _parse(_chat(max_tokens="many"))
    assert json.loads(openai_error_reply(caught.value).body)["error"]["param"] == "max_tokens"


def test_cost_is_micro_units_rounded_up() -> None:
    assert ROUTE is not None
    assert ROUTE.cost_micro(1000, 100) == 3500
    assert ROUTE.cost_micro(1, 0) == 3  # 2.5 rounds up


@settings(max_examples=300, deadline=None)
@given(
    price_in=st.sampled_from([0.0, 0.15, 0.6, 2.5, 3.0, 10.0, 0.1 + 0.2]),
    price_out=st.sampled_from([0.0, 0.6, 1.2, 10.0, 15.0, 0.7]),
    tokens_in=st.integers(0, 10**7),
    tokens_out=st.integers(0, 10**6),
)
def test_cost_is_the_formula_whatever_is_remembered(
    price_in: float, price_out: float, tokens_in: int, tokens_out: int
) -> None:
    """The remembered cost (and a free model's shortcut) is the sum rounded up, every time."""
    provider = LlmProvider(base_url="http://p/v1", models=("m",), price_in_per_mtok=price_in,
                           price_out_per_mtok=price_out)  # fmt: skip
    route = ModelCatalog(LlmSettings(providers={"p": provider})).route("m")
    assert route is not None
    exact = tokens_in * price_in
    exact += tokens_out * price_out
    expected = int(-(-round(exact, 6) // 1))
    assert route.cost_micro(tokens_in, tokens_out) == expected
    assert route.cost_micro(tokens_in, tokens_out) == expected  # remembered


def test_usage_reported_or_counted() -> None:
    assert ROUTE is not None
    worst = worst_case(_parse(_chat(max_tokens=10)), ROUTE, 3.0)
    assert worst.tokens_out == 10 and worst.calls == 1
    reported = b'{"usage": {"prompt_tokens": 4, "completion_tokens": 2}}'
    assert unary_usage(reported, worst, ROUTE, 3.0).tokens_out == 2
    counted = b'{"choices": [{"message": {"content": "abcdefg"}}]}'
    usage = unary_usage(counted, worst, ROUTE, 3.0)
    assert (usage.tokens_in, usage.tokens_out) == (worst.tokens_in, 3)


def test_stream_meter_drops_only_the_usage_only_chunk() -> None:
    assert ROUTE is not None
    meter = StreamMeter(worst_case(_parse(_chat()), ROUTE, 3.0), ROUTE, 3.0)
    assert not meter.started
    assert meter.observe(b'data: {"choices": [{"delta": {"content": "abc"}}], "usage": null}\n\n')
    assert meter.observe(b": ping\r\n\r\n")
    assert not meter.observe(
        b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9}}\n\n'
    )
    assert meter.observe(b"data: [DONE]\n\n")
    assert meter.started and meter.usage().tokens_out == 9


def test_error_shapes_for_openai_clients() -> None:
    quota = openai_error_reply(LlmBudgetExhaustedError("Budget exhausted: agent:a calls"))
    assert quota.status == 429 and quota.headers["x-should-retry"] == "false"
    assert json.loads(quota.body)["error"]["code"] == "insufficient_quota"
    limited = openai_error_reply(LlmRateLimitedError(retry_after=2.2))
    assert limited.headers["retry-after"] == "2" and limited.headers["x-should-retry"] == "true"
    assert json.loads(limited.body)["error"]["code"] == "rate_limit_exceeded"
    event = openai_error_event(LlmRateLimitedError())
    assert event.startswith(b"data: {") and b'"error"' in event


def test_llm_error_codes_are_unique_and_in_their_range() -> None:
    ours = [
        e
        for e in vars(llm_errors).values()
        if isinstance(e, type) and e.__module__ == llm_errors.__name__
    ]
    assert all(-32119 <= e.code <= -32100 for e in ours)
    everyone = all_error_types()
    assert len({(e.code, e.reason) for e in everyone}) == len(everyone)
    assert len({e.code for e in ours}) == len(ours)


def test_settings_resolve_keys_and_refuse_ambiguity() -> None:
    llm = msgspec.convert(
        {"providers": {"p": {"base_url": "http://p/v1", "key_env": "K", "models": ["m"]}}},
        LlmSettings,
    )
    assert resolve_llm_settings(llm, {"K": "secret"}).providers["p"].key == "secret"
    with pytest.raises(LlmConfigError, match=r"\$K"):
        resolve_llm_settings(llm, {})
    twice = LlmSettings(providers={"p": PROVIDER, "q": PROVIDER})
    with pytest.raises(LlmConfigError, match="served by"):
        resolve_llm_settings(twice, {})
