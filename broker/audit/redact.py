"""Redacted copies of payloads, for the agents an operator chose to audit in full.

By default the audit holds only SHA-256 digests of bodies. For agents named in
``[audit] payload_agents`` it also keeps the request body with every value under a key that
names a secret replaced by "[redacted]", and with long strings cut, so an investigation can
read what was asked without the log becoming a store of credentials.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

_SECRET_KEY = re.compile(
    r"(pass(word)?|secret|token|api[_-]?key|authori[sz]ation|credential|cookie|private[_-]?key)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?i)\bbearer\s+[a-z0-9._~+/=-]+")
REDACTED = "[redacted]"
MAX_STRING = 1024
MAX_BYTES = 8192
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder(order="sorted")


def redacted_payload(body: bytes) -> str:
    """The body as compact JSON with secrets replaced and strings cut; "" if not JSON."""
    if not body:
        return ""
    try:
        value = _decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return ""
    text = _encoder.encode(_redact(value, depth=0)).decode()
    return text if len(text) <= MAX_BYTES else text[:MAX_BYTES] + "…[cut]"


def _redact(value: Any, depth: int) -> Any:
    if depth > 32:
        return "[nested too deep]"
    if isinstance(value, dict):
        return {
            k: REDACTED if _SECRET_KEY.search(str(k)) else _redact(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v, depth + 1) for v in value]
    if isinstance(value, str):
        text = _BEARER.sub("Bearer " + REDACTED, value)
        return text if len(text) <= MAX_STRING else text[:MAX_STRING] + "…[cut]"
    if isinstance(value, float):
        return repr(value)  # audit records hold no floats (canonical JSON)
    return value
