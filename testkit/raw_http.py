"""Reading an HTTP/1.1 answer taken off a raw socket (tests that speak to the broker's
connection handling below any HTTP client)."""

from __future__ import annotations

import json


def error_reason(answer: bytes) -> str:
    """The reason in an HTTP error answer read off a raw socket."""
    body = answer.split(b"\r\n\r\n", 1)[1]
    return str(json.loads(body)["error"]["details"][0]["reason"])
