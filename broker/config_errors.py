"""Say where a configuration problem is: the TOML line of a key, and what a value may be.

msgspec names a bad value by its path (``$.budgets.agents[...][0].window``), which an operator
cannot look up in a file: dictionary keys are elided and there are no line numbers. Here the
path is resolved against the decoded document (which ``[...]`` key it was), the key is found on
its line of the TOML text, and an invalid choice is followed by the valid ones.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import msgspec

KeyPath = tuple[str | int, ...]

_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")
_ENUM_VALUE = re.compile(r"^Invalid enum value ")
_BARE_KEY = r"[A-Za-z0-9_-]+"
_KEY = rf"(?:{_BARE_KEY}|\"(?:[^\"\\]|\\.)*\"|'[^']*')"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?")
_ASSIGNMENT = re.compile(rf"^\s*({_DOTTED})\s*=")
_KEY_PART = re.compile(_KEY)


class Where:
    """Turns a problem with a key into ``file:line: what`` (no line when there is no file)."""

    def __init__(self, source: str, text: str = "") -> None:
        self.source = source
        self.text = text

    def say(self, keys: KeyPath, message: str) -> str:
        line = toml_line(self.text, keys) if self.text else 0
        return f"{self.source}:{line}: {message}" if line else f"{self.source}: {message}"


def explain_validation(
    exc: msgspec.ValidationError, document: Any, root: type[Any]
) -> tuple[KeyPath, str]:
    """The key path of the value ``exc`` is about (dictionary keys resolved) and a message that
    lists the valid choices when the value was not one of them."""
    found = _AT.match(str(exc))
    message = found.group("message") if found else str(exc)
    path = _resolve(document, root, _steps(found.group("path") or "") if found else [])
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:
        path = (*path, unknown.group(1))
        return path, f"unknown key `{_dotted(path)}`"
    if _ENUM_VALUE.match(message):
        choices = _choices(root, path)
        if choices:
            message += " (valid: " + ", ".join(repr(c) for c in choices) + ")"
    return path, f"`{_dotted(path)}`: {message}" if path else message


def toml_line(text: str, path: KeyPath) -> int:
    """The 1-based line of ``text`` that sets (or opens the table of) ``path``; 0 if none."""
    table: KeyPath = ()
    arrays: dict[KeyPath, int] = {}
    best, best_score = 0, 0
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = _split(header.group(2))
            if header.group(1) == "[[":  # an array of tables: the n-th header is element n-1
                arrays[table] = arrays.get(table, -1) + 1
                table = (*table, arrays[table])
            here = table
        else:
            assignment = _ASSIGNMENT.match(line)
            if not assignment:
                continue
            here = (*table, *_split(assignment.group(1)))
        score = _common(here, path)
        if score > best_score and (score == len(here) or score == len(path)):
            best, best_score = number, score
    return best


def _steps(path: str) -> list[str | int | None]:
    """``.a[0][...]`` -> ["a", 0, None]; None stands for an elided dictionary key."""
    steps: list[str | int | None] = []
    for name, index in (m.groups() for m in _STEP.finditer(path)):
        steps.append(name if name is not None else int(index) if index is not None else None)
    return steps


def _resolve(document: Any, root: type[Any], steps: Sequence[str | int | None]) -> KeyPath:
    """Follow ``steps`` in ``document``; an elided key is the one whose value alone fails."""
    path: list[str | int] = []
    node = document
    for position, given in enumerate(steps):
        step = given
        if step is None:
            if not isinstance(node, dict):
                break
            step = _failing_key(document, root, (*path,), node) or next(iter(node), None)
            if step is None:
                break
        path.append(step)
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            path.extend(s for s in steps[position + 1 :] if s is not None)
            break
    return tuple(path)


def _failing_key(document: Any, root: type[Any], at: KeyPath, mapping: dict[Any, Any]) -> Any:
    """The first key of ``mapping`` (found at ``at`` in ``document``) whose entry alone fails."""
    for key, value in mapping.items():
        trial = copy.deepcopy(document)
        _set(trial, at, {key: value})
        try:
            msgspec.convert(trial, root)
        except msgspec.ValidationError:
            return key
    return None


def _set(document: Any, at: KeyPath, value: Any) -> None:
    node = document
    for step in at[:-1]:
        node = node[step]
    if at:
        node[at[-1]] = value


def _choices(root: type[Any], path: KeyPath) -> tuple[Any, ...]:
    """The values of the ``Literal`` at ``path`` in ``root``'s annotations (empty if none)."""
    hint: Any = root
    for step in path:
        hint = _step_into(_unwrap(hint), step)
        if hint is None:
            return ()
    hint = _unwrap(hint)
    return get_args(hint) if get_origin(hint) is Literal else ()


def _step_into(hint: Any, step: str | int) -> Any:
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return get_type_hints(hint, include_extras=True).get(str(step))
    args = get_args(hint)
    if get_origin(hint) is dict and len(args) == 2:
        return args[1]
    if get_origin(hint) in (tuple, list) and args:
        return args[0]
    return None


def _unwrap(hint: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` down to the type that says what a value may be."""
    while True:
        origin = get_origin(hint)
        if origin is typing.Annotated:
            hint = get_args(hint)[0]
        elif origin in (Union, types.UnionType):
            options = [a for a in get_args(hint) if a is not type(None)]
            if len(options) != 1:
                return hint
            hint = options[0]
        else:
            return hint


def _split(dotted: str) -> tuple[str, ...]:
    parts = []
    for match in _KEY_PART.finditer(dotted):
        part = match.group(0)
        parts.append(part[1:-1] if part[:1] in "\"'" else part)
    return tuple(parts)


def _common(a: KeyPath, b: KeyPath) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def _dotted(path: KeyPath) -> str:
    shown = ""
    for step in path:
        if isinstance(step, int):
            shown += f"[{step}]"
        elif re.fullmatch(_BARE_KEY, step):
            shown += f".{step}" if shown else step
        else:
            shown += f'."{step}"' if shown else f'"{step}"'
    return shown
