"""Why the broker refused a call, as an a2a-sdk client reports it.

Over HTTP+JSON the SDK turns a refusal whose reason it does not know (every broker reason) into
``A2AClientError("HTTP Error 403: ...")``; the broker's answer is still on the exception's cause,
the ``httpx.HTTPStatusError``, whose body holds a ``google.rpc.ErrorInfo`` with the reason.
``broker_refusal`` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
BROKER_DOMAIN = "a2a-broker"


@dataclass(frozen=True)
class BrokerRefusal:
    """A refusal by the broker: ``reason`` is stable (the broker's docs/errors.md lists them)."""

    reason: str
    message: str
    status: int
    metadata: dict[str, str] = field(default_factory=dict)


def broker_refusal(error: BaseException) -> BrokerRefusal | None:
    """The broker's refusal behind ``error`` (an a2a-sdk client error, or the
    ``httpx.HTTPStatusError`` itself), or None if the broker did not refuse the call."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, httpx.HTTPStatusError):
            return _from_response(current.response)
        current = current.__cause__ or current.__context__
    return None


def _from_response(response: httpx.Response) -> BrokerRefusal | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else []:
        if (isinstance(detail, dict) and detail.get("@type") == ERROR_INFO_TYPE
                and detail.get("domain") == BROKER_DOMAIN):
            metadata = detail.get("metadata")
            return BrokerRefusal(
                reason=str(detail.get("reason", "")),
                message=str(error.get("message", "")) if isinstance(error, dict) else "",
                status=response.status_code,
                metadata={str(k): str(v) for k, v in metadata.items()}
                if isinstance(metadata, dict) else {},
            )
    return None
