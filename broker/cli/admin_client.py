"""One call to the broker's admin API, and failures that say what to do about them.

The broker is found at ``--url`` or ``$A2A_BROKER_URL``, the admin token is ``--admin-token`` or
``$A2A_BROKER_ADMIN_TOKEN``; a failure names the one to check.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from typing import Any

from broker.settings import ADMIN_TOKEN_ENV

URL_ENV = "A2A_BROKER_URL"
_TIMEOUT_S = 30


class AdminAnswer:
    """What the admin API answered: the decoded JSON body (None for an empty one)."""

    def __init__(self, body: Any) -> None:
        self.body = body


class AdminCallFailedError(Exception):
    """The call did not succeed; ``message`` is one line, ``document`` the broker's error JSON."""

    def __init__(self, message: str, document: str | None = None, usage: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.document = document
        self.usage = usage


def call_admin(
    args: argparse.Namespace, method: str, path: str, body: object = None
) -> AdminAnswer:
    """One admin API call; raises ``AdminCallFailedError`` with a line that says what to do."""
    if not args.admin_token:
        raise AdminCallFailedError(
            f"no admin token: set ${ADMIN_TOKEN_ENV} or pass --admin-token", usage=True
        )
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - the operator chooses the broker URL
        args.url.rstrip("/") + "/admin" + path, data=data, method=method
    )
    request.add_header("authorization", f"Bearer {args.admin_token}")
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as resp:  # noqa: S310
            text = resp.read().decode()
    except urllib.error.HTTPError as err:
        document = err.read().decode()
        raise AdminCallFailedError(_refusal_line(err.code, document), document) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise AdminCallFailedError(
            f"cannot reach the broker at {args.url} ({reason}): is it running? Set ${URL_ENV}"
            " or pass --url"
        ) from None
    return AdminAnswer(json.loads(text) if text else None)


_HINTS = {
    "ADMIN_UNAUTHENTICATED": f"check ${ADMIN_TOKEN_ENV} or --admin-token",
    "ADMIN_DISABLED": "the broker has no admin token: set [admin] token_sha256 in its config,"
    f" or ${ADMIN_TOKEN_ENV} in its environment",
}


def _refusal_line(status: int, document: str) -> str:
    """``AGENT_NOT_FOUND (HTTP 404): No agent named 'x'.`` from the broker's error JSON."""
    try:
        error = json.loads(document)["error"]
        reason = str(error["details"][0]["reason"])
        message = str(error.get("message", ""))
    except (ValueError, KeyError, IndexError, TypeError):
        return f"the broker answered HTTP {status}: {document.strip()[:200]}"
    hint = _HINTS.get(reason)
    return f"{reason} (HTTP {status}): {message}" + (f" ({hint})" if hint else "")


