"""One reading holds for a send pointed at the agent's task: when the broker re-encodes a
message that continues its approval task (``broker.approvals.continued``), the a2a-sdk agent
reads the agent's task and context in their place and everything else the broker judged as it
was. Same generators and SDK oracle as ``test_one_reading``: duplicate keys, both spellings,
unknown fields, odd types, escapes and invalid strings included. The broker may refuse.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import assume, event, given
from hypothesis import strategies as st
from test_one_reading import (  # the oracle fixture is used by name
    COMMON,
    REST_PREFIX,
    Obj,
    _headers,
    broker_reading,
    encode,
    message,
    oracle,  # noqa: F401
)

from broker.approvals.continued import Names, continue_send
from broker.errors import BrokerError

AGENT_TASK, AGENT_CONTEXT = "agent-T", "agent-C"
SENDS = {"SendMessage": "/message:send", "SendStreamingMessage": "/message:stream"}


@st.composite
def sends(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """A send whose message names a task (in either spelling, maybe escaped or twice), with
    everything else ``test_one_reading`` generates around it."""
    method = draw(st.sampled_from(list(SENDS)))
    generated = draw(message)
    named = draw(st.sampled_from(["taskId", "task_id", "~taskId"]))
    task = ((named, draw(st.sampled_from(["t-alice", "t-bob"]))),)
    pairs = list(generated.pairs)
    at = draw(st.integers(0, len(pairs)))
    params = Obj((("message", Obj((*pairs[:at], *task, *pairs[at:]))),))
    binding = draw(st.sampled_from(["jsonrpc", "rest"]))
    if binding == "rest":
        return binding, method, encode(params)
    envelope = (("jsonrpc", "2.0"), ("id", 7), ("method", method), ("params", params))
    return binding, method, encode(Obj(envelope))


@COMMON
@given(send=sends())
def test_the_agent_reads_its_own_task_where_the_broker_read_its_own(
    oracle: Any,  # noqa: F811
    send: tuple[str, str, bytes],
) -> None:
    loop, sdk = oracle
    binding, method, body = send
    path = "" if binding == "jsonrpc" else SENDS[method]
    headers = _headers("application/json")
    target = "/rpc" if binding == "jsonrpc" else REST_PREFIX + path
    ctx = broker_reading(binding, "POST", path, headers, body)
    assume(ctx is not None and ctx.reading is not None and ctx.reading.task_id)
    read_before = loop.run_until_complete(sdk.read("POST", target, headers, body))
    assume(read_before is not None)
    assert ctx is not None and ctx.reading is not None and read_before is not None
    before = ctx.reading
    shown = before.task_id or ""
    names = Names(shown, AGENT_TASK, AGENT_CONTEXT, before.context_id or "unnamed")
    try:
        continue_send(ctx, names)
    except BrokerError:
        event("refused on re-encoding")
        return  # refused: nothing is forwarded
    seen = loop.run_until_complete(sdk.read("POST", target, headers, ctx.body))
    assert seen is not None, ctx.body  # what the agent read before, it still reads
    assert seen.task_id == AGENT_TASK
    event(f"context rewritten: {bool(read_before.context_id)}")
    assert seen.context_id == (AGENT_CONTEXT if read_before.context_id else "")
    refs = [AGENT_TASK if r == shown else r for r in read_before.reference_task_ids]
    assert list(seen.reference_task_ids) == refs
    assert (seen.push_task_id, seen.push_url) == (read_before.push_task_id, read_before.push_url)
    assert (seen.skill, seen.operation) == (read_before.skill, read_before.operation)
    again = broker_reading(binding, "POST", path, headers, ctx.body)  # and the broker agrees
    assert again is not None and again.reading is not None
    assert (again.reading.task_id, again.reading.skill) == (AGENT_TASK, before.skill)
    if binding == "jsonrpc":
        assert ctx.params is not None
        assert msgspec.json.decode(ctx.params) == msgspec.json.decode(ctx.body)["params"]
