"""Request bodies and JSON answers of the admin API, shared by its routers."""

from __future__ import annotations

from typing import TypeVar

import msgspec
from litestar import Response

from broker.config_errors import explain_validation
from broker.errors import BrokerError, InvalidAdminRequestError, JSONTooDeepError
from broker.protocols.jsonlimits import json_depth_exceeds

_encoder = msgspec.json.Encoder()
_B = TypeVar("_B", bound=msgspec.Struct)

# No admin body (an agent card included) needs deeper JSON; deeper would exhaust the decoder.
MAX_ADMIN_JSON_DEPTH = 64


def decode_body(
    body: bytes, kind: type[_B], invalid: type[BrokerError] = InvalidAdminRequestError
) -> _B:
    """``body`` as ``kind``; a body that is not one raises ``invalid`` naming the field."""
    if json_depth_exceeds(body, MAX_ADMIN_JSON_DEPTH):
        raise JSONTooDeepError(metadata={"maxDepth": str(MAX_ADMIN_JSON_DEPTH)})
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        # Valid JSON with a wrong value: name the field, and the valid choices for a choice.
        _, problem = explain_validation(exc, msgspec.json.decode(body), kind)
        raise invalid(f"Invalid request body: {problem}") from None
    except msgspec.DecodeError as exc:
        # msgspec's message says where the JSON breaks: safe to show.
        raise invalid(f"Invalid request body: {exc}") from None
    except RecursionError:  # unreachable past the depth check; never a 500 all the same
        raise JSONTooDeepError(metadata={"maxDepth": str(MAX_ADMIN_JSON_DEPTH)}) from None


def json_reply(payload: object, status: int = 200) -> Response[bytes]:
    return Response(_encoder.encode(payload), status_code=status, media_type="application/json")
