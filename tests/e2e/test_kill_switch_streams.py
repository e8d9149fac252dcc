"""The global kill switch ends open streams and refuses new calls until it is lifted (issue 12).

Uses the tight-limits broker and the SSE upstream of test_stream_limits.py (memory store, one
process: the switch is engaged and lifted through the admin API).
"""

from __future__ import annotations

import time

import httpx
import pytest

from broker.errors import KillSwitchEngagedError

from .test_stream_limits import (  # noqa: F401 - the fixtures are used by name
    MAX_S,
    SseUpstream,
    TightBroker,
    _error_reason,
    _stream,
    tight_broker,
    upstream,
)
from .wire import A2A_V1, assert_jsonrpc_error, jsonrpc_request, user_message


@pytest.mark.parametrize("upstream", ["endless"], indirect=True)
async def test_the_kill_switch_ends_open_streams_and_refuses_new_calls_until_lifted(
    upstream: tuple[SseUpstream, str], tight_broker: TightBroker  # noqa: F811
) -> None:
    _, url = upstream
    kill = f"{tight_broker.url}/admin/kill"
    lines: list[str] = []
    started = time.monotonic()
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        try:
            async for line in _stream(url, tight_broker.caller_headers):
                lines.append(line)
                if len(lines) == 2:  # the stream is open: stop everything
                    r = await http.post(kill, headers=tight_broker.admin_headers, json={})
                    assert r.status_code == 200 and r.json()["engaged"] is True, r.text
            assert _error_reason(lines) == KillSwitchEngagedError.reason
            assert time.monotonic() - started < MAX_S  # ended by the switch, not the time limit
            send = jsonrpc_request("SendMessage", {"message": user_message("after")})
            headers = {**A2A_V1, **tight_broker.caller_headers}
            assert_jsonrpc_error(await http.post(url, json=send, headers=headers),
                                 KillSwitchEngagedError)  # fmt: skip
        finally:
            lifted = await http.delete(kill, headers=tight_broker.admin_headers)
        assert lifted.json() == {"engaged": False, "was_engaged": True}
        assert (await http.get(kill, headers=tight_broker.admin_headers)).json() == {
            "engaged": False
        }
    async for line in _stream(url, tight_broker.caller_headers):  # flows again
        assert line.startswith("data:") and "statusUpdate" in line
        break
