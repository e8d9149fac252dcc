"""ListTasks pages the broker issues: each caller sees only its own tasks, page after page.

An agent lists every task it holds and pages with its own tokens, which may name other callers'
tasks. The broker therefore never hands an agent's page token to a caller: it seals it
(AES-256-GCM under a key derived from the signing key, so every replica opens what any replica
sealed) together with the number of the caller's tasks listed so far, bound to the caller and
the agent (associated data) and to an expiry. A caller's token is opened, and the agent's
token inside is what the agent receives; a token that does not open (forged, another caller's,
another agent's, expired, from a rotated key) is ``InvalidPageTokenError``. Each page the agent
answers is filtered to the caller's tasks; ``totalSize`` counts the caller's tasks listed so
far (exact on the last page). Decision 0016.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.errors import InvalidPageTokenError
from broker.identity.keys import BrokerKeys

_LABEL = b"a2a-broker/list-tasks/page-token/v1"
_NONCE_BYTES = 12
PAGE_TOKEN_TTL_S = 3600  # a listing is followed within minutes; an hour is generous
MAX_PAGE_TOKEN_CHARS = 4096


class _Sealed(msgspec.Struct, array_like=True):
    agent_token: str
    seen: int  # the caller's tasks listed on the pages before this one
    exp: int


@dataclass(frozen=True, slots=True)
class Page:
    """Where a caller's listing stands: the agent's token for the next page, tasks seen so far."""

    agent_token: str
    seen: int


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Sealed)


class PageTokens:
    """Seals and opens the broker's ListTasks page tokens. Stateless; safe to share."""

    def __init__(self, keys: BrokerKeys, clock: Callable[[], float] = time.time) -> None:
        raw = keys.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL).derive(raw)
        self._aead = AESGCM(key)
        self._clock = clock

    def seal(self, caller: str, agent: str, page: Page) -> str:
        """The token a caller is given for the page after ``page``."""
        exp = int(self._clock()) + PAGE_TOKEN_TTL_S
        plain = _encoder.encode(_Sealed(page.agent_token, page.seen, exp))
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, plain, _bound_to(caller, agent))
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, caller: str, agent: str, token: str) -> Page:
        """The page a token stands for; raises ``InvalidPageTokenError``."""
        if len(token) > MAX_PAGE_TOKEN_CHARS:
            raise InvalidPageTokenError(detail="page token too long")
        try:
            sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            nonce, box = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
            opened = _decoder.decode(self._aead.decrypt(nonce, box, _bound_to(caller, agent)))
        except (ValueError, binascii.Error, InvalidTag, msgspec.DecodeError):
            raise InvalidPageTokenError from None
        if opened.exp <= self._clock():
            raise InvalidPageTokenError(detail="page token expired")
        return Page(opened.agent_token, opened.seen)


def _bound_to(caller: str, agent: str) -> bytes:
    return f"{caller}\n{agent}".encode()


# --- The request the agent receives --------------------------------------------------------------


def jsonrpc_body_for_agent(request_id: msgspec.Raw, params: bytes, agent_token: str) -> bytes:
    """The ListTasks request with the caller's page token replaced by the agent's."""
    fields: dict[str, Any] = msgspec.json.decode(params)
    fields.pop("pageToken", None)
    fields.pop("page_token", None)
    if agent_token:
        fields["pageToken"] = agent_token
    envelope = {"jsonrpc": "2.0", "id": request_id, "method": "ListTasks", "params": fields}
    return _encoder.encode(envelope)


def query_for_agent(query: str, agent_token: str) -> str:
    """The ListTasks query string with the caller's page token replaced by the agent's."""
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "pageToken"]
    if agent_token:
        pairs.append(("pageToken", agent_token))
    return urlencode(pairs)


# --- The answer the caller receives --------------------------------------------------------------

Owned = Callable[[str], Awaitable[bool]]


async def callers_page(
    result: dict[str, Any], before: Page | None, owned: Owned, seal: Callable[[Page], str]
) -> dict[str, Any]:
    """The agent's ListTasks result cut to the caller's tasks, with the broker's page token."""
    tasks = result.get("tasks")
    kept = [t for t in tasks if await _is_owned(t, owned)] if isinstance(tasks, list) else []
    seen = (before.seen if before is not None else 0) + len(kept)
    page = {**result, "tasks": kept, "totalSize": seen}
    agent_next = result.get("nextPageToken")
    page["nextPageToken"] = (
        seal(Page(agent_next, seen)) if isinstance(agent_next, str) and agent_next else ""
    )
    return page


async def _is_owned(task: Any, owned: Owned) -> bool:
    task_id = task.get("id") if isinstance(task, dict) else None
    return isinstance(task_id, str) and bool(task_id) and await owned(task_id)
