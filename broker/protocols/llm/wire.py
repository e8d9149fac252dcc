"""Broker errors as OpenAI API errors: ``{"error": {"message", "type", "param", "code"}}``.

The status is the error's HTTP status, which is what OpenAI clients map to their exception
types (401 AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 429
RateLimitError, 5xx InternalServerError). ``x-should-retry`` tells them whether retrying can
help, so an exhausted budget (429 ``insufficient_quota``) is not retried while a rate limit is.
"""

from __future__ import annotations

import msgspec

from broker.errors import BrokerError
from broker.protocols.a2a.wire import error_headers
from broker.types import Reply

_encoder = msgspec.json.Encoder()

# reason -> (type, code, param), as OpenAI's own API names them where it has a name.
_OPENAI_NAMES: dict[str, tuple[str, str, str | None]] = {
    "UNAUTHENTICATED": ("invalid_request_error", "invalid_api_key", None),
    "INVALID_CREDENTIAL": ("invalid_request_error", "invalid_api_key", None),
    "CALLER_SUSPENDED": ("permission_error", "agent_suspended", None),
    "BODY_TOO_LARGE": ("invalid_request_error", "request_too_large", None),
    "JSON_TOO_DEEP": ("invalid_request_error", "json_too_deep", None),
    "INVALID_JSON": ("invalid_request_error", "invalid_json", None),
    "LLM_MODEL_NOT_FOUND": ("invalid_request_error", "model_not_found", "model"),
    "LLM_MODEL_NOT_ALLOWED": ("permission_error", "model_not_allowed", "model"),
    "LLM_BUDGET_EXHAUSTED": ("insufficient_quota", "insufficient_quota", None),
    "LLM_RATE_LIMITED": ("requests", "rate_limit_exceeded", None),
    "LLM_PROVIDER_RATE_LIMITED": ("requests", "rate_limit_exceeded", None),
    "STORE_UNAVAILABLE": ("server_error", "service_unavailable", None),
}
_TYPE_BY_STATUS = {401: "authentication_error", 403: "permission_error", 429: "requests"}


def openai_names(err: BrokerError) -> tuple[str, str, str | None]:
    """(type, code, param) of ``err`` on the OpenAI wire."""
    found = _OPENAI_NAMES.get(err.reason)
    if found is not None:
        return found
    status = err.http_status
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    return _TYPE_BY_STATUS.get(status, default_type), err.reason.lower(), None


def openai_error_body(err: BrokerError) -> bytes:
    kind, code, param = openai_names(err)
    # A refusal may name the offending field itself (metadata "param").
    param = err.metadata.get("param", param)
    error = {"message": err.message, "type": kind, "param": param, "code": code}
    return _encoder.encode({"error": error})


def openai_error_headers(err: BrokerError) -> dict[str, str]:
    headers = error_headers(err)
    headers["x-should-retry"] = "true" if err.retryable else "false"
    return headers


def openai_error_reply(err: BrokerError) -> Reply:
    return Reply(err.http_status, openai_error_body(err), headers=openai_error_headers(err))


def openai_error_event(err: BrokerError) -> bytes:
    """An error after a stream began: a ``data:`` event whose JSON has ``error`` (OpenAI clients
    raise APIError on it)."""
    return b"data: " + openai_error_body(err) + b"\n\n"
