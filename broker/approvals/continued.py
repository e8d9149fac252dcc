"""A broker-owned task that stands for the agent's: requests naming it reach the agent's task,
and the agent's answers are shown to the caller under the broker's ids.

Once an approved call is forwarded, the caller's task ``approval-<hex>`` is the agent's task
``T`` (and, if the context the caller was shown is not the agent's, that context is the
agent's context ``C``: the caller's message named none and the broker showed its task id, or
it named such a context of the broker's). A send that continues the task
(``message.taskId``, or a new task in the context, ``message.contextId``) is forwarded with
``T`` and ``C`` in their place (and ``T`` for the broker's task among its
``referenceTaskIds``), re-encoded from the one reading of the body
(``broker.protocols.a2a.reading``: the generic decode keeps the last of duplicate keys, as
the agent's ``json.loads`` does; the reading has refused both spellings of a field already),
never by replacing text. Every answer the agent gives on that task (a task, a message, a
status or artifact update, each SSE event) names the broker's ids for ``T`` and ``C`` again,
so the caller sees one task throughout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from broker.errors import InvalidParamsError
from broker.types import MediationContext, Outcome, Reply, StreamReply

_ID_KEYS = ("id", "taskId", "task_id")
_CONTEXT_KEYS = ("contextId", "context_id")
_REFERENCE_KEYS = ("referenceTaskIds", "reference_task_ids")
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Names:
    """The broker's ids and the agent's ids they stand for (``agent_context`` empty: the
    context the caller was shown is the agent's)."""

    shown_task: str
    agent_task: str
    agent_context: str = ""
    shown_context: str = ""

    @property
    def to_shown(self) -> dict[str, str]:
        names = {self.agent_task: self.shown_task}
        if self.agent_context:
            names[self.agent_context] = self.shown_context
        return names


def continue_send(ctx: MediationContext, names: Names) -> None:
    """Point a send whose message names the broker's task (or context) at the agent's.

    Raises ``InvalidParamsError`` if the body cannot be re-encoded as it was read."""
    assert ctx.operation is not None and ctx.operation.sends_message  # noqa: S101
    try:
        document = msgspec.json.decode(ctx.body)
    except msgspec.DecodeError:
        raise InvalidParamsError("The message could not be read again.") from None
    params = document.get("params") if ctx.binding == "jsonrpc" else document
    message = params.get("message") if isinstance(params, dict) else None
    if not isinstance(message, dict):
        return
    for key in _ID_KEYS[1:]:
        if message.get(key) == names.shown_task:
            message[key] = names.agent_task
    for key in _CONTEXT_KEYS:
        if names.agent_context and message.get(key) == names.shown_context:
            message[key] = names.agent_context
    for key in _REFERENCE_KEYS:
        if isinstance(refs := message.get(key), list):
            message[key] = [names.agent_task if r == names.shown_task else r for r in refs]
    try:
        body = _encoder.encode(document)
        ctx.params = msgspec.Raw(_encoder.encode(params)) if ctx.binding == "jsonrpc" else None
    except (msgspec.EncodeError, UnicodeError):  # a string the agent could not read either
        raise InvalidParamsError("The message could not be read again.") from None
    ctx.body = body
    ctx.approval_task = names.shown_task
    ctx.task_id = names.agent_task if ctx.task_id == names.shown_task else ctx.task_id


def shown(outcome: Outcome, names: Names) -> Outcome:
    """The agent's answer with the agent's ids shown as the broker's."""
    if isinstance(outcome, Reply):
        body = shown_json(outcome.body, names)
        return Reply(outcome.status, body, outcome.media_type, outcome.headers)
    return StreamReply(shown_events(outcome.events, names), outcome.status, outcome.headers)


async def shown_events(events: AsyncIterator[bytes], names: Names) -> AsyncIterator[bytes]:
    async for event in events:
        yield shown_event(event, names)


def shown_event(event: bytes, names: Names) -> bytes:
    """One SSE frame as the broker relays it (``data: <one line of JSON>``, maybe after an
    ``event:`` line), with the ids renamed; a comment passes as it is."""
    head, sep, rest = event.partition(b"data: ")
    if not sep:
        return event
    data, crlf, tail = rest.partition(b"\r\n")
    return head + sep + shown_json(data, names) + crlf + tail


def shown_json(body: bytes, names: Names) -> bytes:
    if not body:
        return body
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body
    return _encoder.encode(_renamed(document, names.to_shown))


def _renamed(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, list):
        return [_renamed(v, names) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in _ID_KEYS or key in _CONTEXT_KEYS:
            out[key] = names.get(item, item) if isinstance(item, str) else item
        else:
            out[key] = _renamed(item, names)
    return out


def ids_of(answer: bytes) -> tuple[str, str]:
    """The task id and context id of an agent's answer (a unary body or one SSE frame's data,
    either binding), ``("", "")`` if it names none."""
    try:
        document = msgspec.json.decode(answer)
    except msgspec.DecodeError:
        return "", ""
    if isinstance(document, dict) and isinstance(document.get("result"), dict):
        document = document["result"]
    if not isinstance(document, dict):
        return "", ""
    for member, id_key in (("task", "id"), ("statusUpdate", "taskId"),
                           ("artifactUpdate", "taskId"), ("message", "taskId")):
        found = document.get(member)
        if isinstance(found, dict) and isinstance(found.get(id_key), str):
            context = found.get("contextId")
            return found[id_key], context if isinstance(context, str) else ""
    return "", ""
