"""Where the text is in A2A and OpenAI payloads: a walk that hands each scannable string to a
function and rebuilds only what changed. Payloads are decoded JSON (dicts, lists, strings).

A2A (1.0 and 0.3 shapes): message and artifact parts (text; data parts, every string value at
any depth; file names; file URLs; inline files whose media type is textual, decoded from base64
and encoded again when changed), artifact names and descriptions, metadata values, and the
messages inside tasks, status updates, artifact updates, histories and stream responses.
OpenAI chat: message contents (strings or text parts), names, tool-call arguments; completions'
message contents and tool calls; streamed deltas.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

TextFn = Callable[[str], str]

_A2A_CONTAINERS = frozenset(
    {
        "message",
        "task",
        "tasks",
        "statusUpdate",
        "artifactUpdate",
        "status",
        "artifact",
        "artifacts",
        "history",
        "result",
        "params",
    }
)
_TEXTUAL = (
    "text/",
    "application/json",
    "application/xml",
    "application/yaml",
    "application/x-yaml",
    "application/csv",
    "application/x-ndjson",
)


def is_textual(media_type: str) -> bool:
    media = media_type.split(";", 1)[0].strip().lower()
    return media.startswith(_TEXTUAL) or media.endswith(("+json", "+xml"))


def map_json(value: Any, fn: TextFn) -> Any:
    """Every string value at any depth (object keys are left alone)."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return _map_list(value, lambda item: map_json(item, fn))
    if isinstance(value, dict):
        return _map_values(value, {k: (lambda v: map_json(v, fn)) for k in value})
    return value


def map_a2a(value: Any, fn: TextFn) -> Any:
    """The texts of any A2A object: params, message, task, artifact, stream response, lists."""
    if isinstance(value, list):
        return _map_list(value, lambda item: map_a2a(item, fn))
    if not isinstance(value, dict):
        return value
    mappers: dict[str, Callable[[Any], Any]] = {}
    for key in value:
        if key == "parts":
            mappers[key] = lambda parts: (
                _map_list(parts, lambda p: _map_part(p, fn)) if isinstance(parts, list) else parts
            )
        elif key in _A2A_CONTAINERS:
            mappers[key] = lambda item: map_a2a(item, fn)
        elif key == "metadata":
            mappers[key] = lambda item: map_json(item, fn)
        elif key in ("name", "description") and "artifactId" in value:
            mappers[key] = lambda item: fn(item) if isinstance(item, str) else item
    return _map_values(value, mappers)


def _map_part(part: Any, fn: TextFn) -> Any:
    if not isinstance(part, dict):
        return part
    mappers: dict[str, Callable[[Any], Any]] = {}
    strings = ("text", "url", "filename", "uri", "name")
    for key in part:
        if key in strings:
            mappers[key] = lambda item: fn(item) if isinstance(item, str) else item
        elif key in ("data", "metadata"):
            mappers[key] = lambda item: map_json(item, fn)
        elif key in ("raw", "bytes") and is_textual(_media_type(part)):
            mappers[key] = lambda item: _map_base64(item, fn)
        elif key == "file":  # A2A 0.3: {"kind": "file", "file": {bytes|uri, name, mimeType}}
            mappers[key] = lambda item: _map_part(item, fn)
    return _map_values(part, mappers)


def _media_type(part: dict[str, Any]) -> str:
    return str(part.get("mediaType") or part.get("mimeType") or "")


def _map_base64(value: Any, fn: TextFn) -> Any:
    """An inline textual file: decoded, mapped, encoded again if it changed. A file that is not
    valid base64 of UTF-8 text is scanned as the string it is."""
    if not isinstance(value, str):
        return value
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return fn(value)
    new = fn(text)
    return value if new is text else base64.b64encode(new.encode("utf-8")).decode("ascii")


def map_chat_request(body: Any, fn: TextFn) -> Any:
    """OpenAI chat completions request: every message's texts."""
    if not isinstance(body, dict):
        return body
    return _map_values(
        body,
        {
            "messages": lambda msgs: (
                _map_list(msgs, lambda m: _map_chat_message(m, fn))
                if isinstance(msgs, list)
                else msgs
            )
        },
    )


def map_chat_response(body: Any, fn: TextFn) -> Any:
    """OpenAI chat completion (or one streamed chunk): each choice's message or delta."""
    if not isinstance(body, dict):
        return body

    def choice(item: Any) -> Any:
        if not isinstance(item, dict):
            return item
        return _map_values(
            item,
            {k: (lambda m: _map_chat_message(m, fn)) for k in ("message", "delta") if k in item},
        )

    return _map_values(
        body, {"choices": lambda cs: _map_list(cs, choice) if isinstance(cs, list) else cs}
    )


def _map_chat_message(message: Any, fn: TextFn) -> Any:
    if not isinstance(message, dict):
        return message
    mappers: dict[str, Callable[[Any], Any]] = {}
    for key in message:
        if key in ("content", "refusal", "name"):
            mappers[key] = lambda item: _map_content(item, fn)
        elif key == "tool_calls":
            mappers[key] = lambda calls: map_json(calls, fn)
    return _map_values(message, mappers)


def _map_content(content: Any, fn: TextFn) -> Any:
    if isinstance(content, str):
        return fn(content)
    if isinstance(content, list):  # [{"type": "text", "text": ...}, {"type": "image_url", ...}]
        return _map_list(
            content,
            lambda p: (
                _map_values(p, {"text": lambda t: fn(t) if isinstance(t, str) else t})
                if isinstance(p, dict)
                else p
            ),
        )
    return content


def _map_list(items: list[Any], fn: Callable[[Any], Any]) -> list[Any]:
    mapped = [fn(item) for item in items]
    return items if all(a is b for a, b in zip(mapped, items, strict=True)) else mapped


def _map_values(obj: dict[str, Any], mappers: dict[str, Callable[[Any], Any]]) -> dict[str, Any]:
    changed: dict[str, Any] = {}
    for key, mapper in mappers.items():
        if key in obj:
            new = mapper(obj[key])
            if new is not obj[key]:
                changed[key] = new
    return {**obj, **changed} if changed else obj
