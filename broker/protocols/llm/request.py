"""The parts of an OpenAI request the broker must read, and the one change it makes to streams.

Only the envelope is decoded (model, stream, output caps); the body is forwarded as sent, except
that a streamed chat request is re-encoded with ``stream_options.include_usage = true`` so the
provider reports the usage the broker charges.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from broker.errors import JSONParseError, JSONTooDeepError
from broker.llm.context import CallKind
from broker.llm.errors import LlmInvalidRequestError
from broker.protocols.jsonlimits import json_depth_exceeds


class _ChatEnvelope(msgspec.Struct, frozen=True):
    model: str
    stream: bool | None = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = 1


class _EmbeddingsEnvelope(msgspec.Struct, frozen=True):
    model: str


_chat = msgspec.json.Decoder(_ChatEnvelope)
_embeddings = msgspec.json.Decoder(_EmbeddingsEnvelope)
_any = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.json.Encoder()


class LlmRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A checked request: what it asks for, and the bytes to send the provider."""

    model: str
    body: bytes
    stream: bool = False
    max_output_tokens: int = 0  # worst case over every choice; 0 for embeddings
    wants_usage: bool = False  # the caller itself asked for usage in the stream
    prompt_bytes: int = 0


def parse_request(
    kind: CallKind, body: bytes, *, max_depth: int, default_max_tokens: int, max_tokens_limit: int
) -> LlmRequest:
    """Check ``body`` and read its envelope. Raises JSONTooDeepError, JSONParseError or
    LlmInvalidRequestError (with the offending ``param``)."""
    if json_depth_exceeds(body, max_depth):
        raise JSONTooDeepError
    if kind == "embeddings":
        model = _decode(_embeddings, body).model
        return LlmRequest(model=_model(model), body=body, prompt_bytes=len(body))
    envelope = _decode(_chat, body)
    asked = envelope.max_completion_tokens or envelope.max_tokens
    if asked is not None and asked < 1:
        raise _invalid("max_tokens must be a positive integer", "max_tokens")
    if max_tokens_limit and asked is not None and asked > max_tokens_limit:
        raise _invalid(f"max_tokens may be at most {max_tokens_limit} here", "max_tokens")
    choices = envelope.n or 1
    if choices < 1:
        raise _invalid("n must be a positive integer", "n")
    request = LlmRequest(
        model=_model(envelope.model),
        body=body,
        stream=bool(envelope.stream),
        max_output_tokens=(asked or default_max_tokens) * choices,
        prompt_bytes=len(body),
    )
    return with_stream_usage(request) if request.stream else request


def with_stream_usage(request: LlmRequest) -> LlmRequest:
    """The request re-encoded to ask for usage in the stream's final chunk."""
    document = _decode(_any, request.body)
    options = document.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _invalid("stream_options must be an object", "stream_options")
    wants = options.get("include_usage") is True
    document["stream_options"] = {**options, "include_usage": True}
    body = request.body if wants else _encoder.encode(document)
    return msgspec.structs.replace(request, body=body, wants_usage=wants)


def estimate_tokens(n_bytes: int, bytes_per_token: float) -> int:
    """Tokens counted for ``n_bytes`` of text when nobody reports the real number."""
    return math.ceil(n_bytes / bytes_per_token) if n_bytes > 0 else 0


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _invalid(f"Invalid request: {exc}", _param_of(exc)) from None
    except msgspec.DecodeError:
        raise JSONParseError from None


def _param_of(exc: msgspec.ValidationError) -> str:
    # msgspec names the field as "... - at `$.max_tokens`"
    text = str(exc)
    return text.rsplit("$.", 1)[-1].rstrip("`").split(".")[0] if "$." in text else ""


def _model(model: str) -> str:
    if not model:
        raise _invalid("model must be a non-empty string", "model")
    return model


def _invalid(message: str, param: str) -> LlmInvalidRequestError:
    return LlmInvalidRequestError(message, metadata={"param": param} if param else None)
