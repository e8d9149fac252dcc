"""``ParseRequest``'s header limit: each header counts as ``name: value\\r\\n``."""

from __future__ import annotations

import json

import pytest
from stage_kit import Next

from broker.errors import HeadersTooLargeError
from broker.settings import LimitSettings
from broker.stages.parse import ParseRequest
from broker.types import MediationContext

BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": {
    "messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}}).encode()  # fmt: skip
BASE = {"content-type": "application/json", "a2a-version": "1.0"}


async def _body() -> bytes:
    return BODY


def _sized(limit: int, extra: int) -> dict[str, str]:
    """Headers whose counted size is ``limit + extra``."""
    used = sum(len(name) + len(value) + 4 for name, value in BASE.items())
    filler = limit + extra - used - len("x-filler") - 4
    return {**BASE, "x-filler": "f" * filler}


@pytest.mark.parametrize("extra", [-1, 0])
async def test_headers_up_to_the_limit_pass(extra: int) -> None:
    following = Next()
    ctx = MediationContext("jsonrpc", "b", "POST", headers=_sized(500, extra), read_body=_body)
    await ParseRequest(LimitSettings(max_header_bytes=500))(ctx, following)
    assert following.called and ctx.operation is not None


async def test_a_byte_over_the_limit_is_refused_before_the_body_is_read() -> None:
    read: list[bool] = []

    async def body() -> bytes:
        read.append(True)
        return BODY

    following = Next()
    ctx = MediationContext("jsonrpc", "b", "POST", headers=_sized(500, 1), read_body=body)
    with pytest.raises(HeadersTooLargeError) as refused:
        await ParseRequest(LimitSettings(max_header_bytes=500))(ctx, following)
    assert refused.value.metadata == {"maxHeaderBytes": "500"}
    assert not following.called and not read
