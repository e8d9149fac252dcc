"""The settings as a flat list, read from the settings classes: key path, default, comment.

A field of a table of entries (``[agents.NAME]``, ``[[audit.export.sinks]]``) has ``ENTRY`` in
its path where the entry's name or position goes. ``broker.settings_doc`` checks the
configuration page against this list.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, get_args, get_origin, get_type_hints

import msgspec

from broker.settings import Settings

ENTRY = "*"  # stands for any entry name or position in a key path pattern
_NOT_FROM_THE_FILE = {("base_dir",), ("admin_token",), ("store", "credentials")}
_FIELD_LINE = re.compile(r"^\s*(\w+)\s*:")


@dataclass(frozen=True)
class Setting:
    """One setting: its key path pattern, default (``required`` if none) and source comment."""

    path: tuple[str, ...]
    default: Any
    required: bool
    comment: str

    @property
    def in_entry(self) -> bool:
        return ENTRY in self.path


def settings_fields(root: type[Any] = Settings) -> list[Setting]:
    """Every setting reachable from ``root``, in class order."""
    return list(_fields(root, ()))


def _fields(struct: type[Any], prefix: tuple[str, ...]) -> Iterator[Setting]:
    hints = get_type_hints(struct, include_extras=True)
    defaults = _defaults(struct)
    comments = _comments(struct)
    for name in struct.__struct_fields__:
        path = (*prefix, name)
        if path in _NOT_FROM_THE_FILE:
            continue
        inner, entry_levels = _entry_type(hints[name])
        if is_struct(inner):
            yield from _fields(inner, (*path, *([ENTRY] * entry_levels)))
            continue
        required = name not in defaults
        yield Setting(path, defaults.get(name), required, comments.get(name, ""))


def _defaults(struct: type[Any]) -> dict[str, Any]:
    """Field -> default value (factories called); required fields are absent."""
    found: dict[str, Any] = {}
    names = struct.__struct_fields__
    for name, default in zip(names[len(names) - len(struct.__struct_defaults__):],
                             struct.__struct_defaults__, strict=True):
        found[name] = default.factory() if isinstance(default, msgspec._core.Factory) else default
    return found


def _entry_type(hint: Any) -> tuple[Any, int]:
    """The type under any ``dict[str, X]`` / ``tuple[X, ...]`` of structs, and how many levels
    of entries lead to it."""
    levels = 0
    hint = plain(hint)
    while True:
        origin, args = get_origin(hint), get_args(hint)
        if origin is dict and len(args) == 2 and holds_struct(args[1]):
            hint, levels = plain(args[1]), levels + 1
        elif origin in (tuple, list) and args and holds_struct(args[0]):
            hint, levels = plain(args[0]), levels + 1
        else:
            return hint, levels


def holds_struct(hint: Any) -> bool:
    """Whether ``hint`` is a struct, or a dict / tuple / list that holds structs."""
    inner = plain(hint)
    if is_struct(inner):
        return True
    origin, args = get_origin(inner), get_args(inner)
    if origin is dict and len(args) == 2:
        return holds_struct(args[1])
    return origin in (tuple, list) and bool(args) and holds_struct(args[0])


def plain(hint: Any) -> Any:
    """``hint`` without ``Annotated`` and without ``| None``."""
    while get_origin(hint) is typing.Annotated:
        hint = get_args(hint)[0]
    options = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) in (typing.Union, types.UnionType) and len(options) == 1:
        return plain(options[0])
    return hint


def is_struct(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, msgspec.Struct)


def _comments(struct: type[Any]) -> dict[str, str]:
    """The ``#`` comments above (or beside) each field in the class's source."""
    try:
        lines = inspect.getsource(struct).splitlines()
    except (OSError, TypeError):
        return {}
    found: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# "))
            continue
        named = _FIELD_LINE.match(line)
        if named and "(" not in line.split(":")[0]:
            beside = line.split("#", 1)[1].strip() if "#" in line else ""
            found[named.group(1)] = " ".join([*pending, beside]).strip()
        pending = []
    return found
