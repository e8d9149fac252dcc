"""Check docs/configuration.md against the settings classes, so the two cannot drift.

``python -m broker.settings_doc`` prints what the page lacks or gets wrong, with ready-to-paste
lines for missing settings (their defaults from the classes, their descriptions from the
comments beside the fields in the source), and exits 1; with nothing to report it prints
``docs/configuration.md matches the settings`` and exits 0. ``tests/unit/test_configuration_doc.py``
runs the same check.

What the page must hold, in its ```toml blocks (the annotated-TOML format it already has):

* every setting, by its key path; an entry of a table of tables (``[agents.NAME]``,
  ``[[audit.export.sinks]]``, ``[budgets.agents]``...) is documented by an example entry;
* a setting outside such entries shows its default value;
* a field of an example entry shows its default, unless the default means "not set" ("", an
  empty list, none) and the example fills it in, or its comment gives the default;
* a ``#`` comment saying what it does, on its line or on indented comment lines below it;
* nothing that is not a setting.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import msgspec

from broker.config_errors import KeyPath, toml_line
from broker.settings import Settings
from broker.settings_fields import ENTRY, Setting, holds_struct, is_struct, plain, settings_fields

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
_TOML_BLOCK = re.compile(r"```toml\n(.*?)```", re.DOTALL)


Entry = tuple[KeyPath, Any, str]  # (concrete key path, documented value, its description)


@dataclass
class Documented:
    """What the blocks document: key pattern -> every place it is shown."""

    values: dict[tuple[str, ...], list[Entry]] = field(default_factory=dict)


# --- what the page documents ------------------------------------------------------------------


def documented(text: str, root: type[Any] = Settings) -> tuple[Documented, list[str]]:
    """What the ```toml blocks of ``text`` document, and the blocks that are not valid TOML."""
    found = Documented()
    broken = []
    for match in _TOML_BLOCK.finditer(text):
        block = match.group(1)
        try:
            values = tomllib.loads(block)
        except tomllib.TOMLDecodeError as exc:
            broken.append(f"a ```toml block is not valid TOML: {exc}")
            continue
        _walk(values, root, (), (), block=block, found=found)
    return found, broken


def _walk(
    value: Any, hint: Any, pattern: tuple[str, ...], concrete: KeyPath, *, block: str,
    found: Documented,
) -> None:
    """Record every documented leaf under ``value`` (typed ``hint``) in ``found``."""
    hint = plain(hint)
    origin, args = get_origin(hint), get_args(hint)
    if is_struct(hint) and isinstance(value, dict):
        hints = get_type_hints(hint, include_extras=True)
        for key, item in value.items():
            if key not in hints:
                found.values.setdefault((*pattern, key), []).append(((*concrete, key), item, "?"))
                continue
            _walk(item, hints[key], (*pattern, key), (*concrete, key), block=block, found=found)
        return
    if origin is dict and holds_struct(args[1]) and isinstance(value, dict):
        for key, item in value.items():
            _walk(item, args[1], (*pattern, ENTRY), (*concrete, key), block=block, found=found)
        return
    if origin in (tuple, list) and args and holds_struct(args[0]) and isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, args[0], (*pattern, ENTRY), (*concrete, index), block=block, found=found)
        return
    found.values.setdefault(pattern, []).append((concrete, value, _description(block, concrete)))


def _description(block: str, path: KeyPath) -> str:
    """The comment of the line that sets ``path``, with indented comment lines below it."""
    lines = block.splitlines()
    number = toml_line(block, path)
    if not number:
        return ""
    code = _outside_strings(lines[number - 1])
    text = [code.split("#", 1)[1].strip()] if "#" in code else []
    for below in lines[number:]:
        if not (below.startswith((" ", "\t")) and below.strip().startswith("#")):
            break
        text.append(below.strip().lstrip("#").strip())
    return " ".join(text)


def _outside_strings(line: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'', "", line)


# --- the check --------------------------------------------------------------------------------


def check(text: str, root: type[Any] = Settings) -> list[str]:
    """What the page ``text`` lacks or gets wrong; empty when it matches the settings."""
    docs, problems = documented(text, root)
    settings = {s.path: s for s in settings_fields(root)}
    for path, setting in settings.items():
        entries = docs.values.get(path)
        if not entries:
            problems.append(f"missing: {_key(path)} = {_toml(setting)}")
            continue
        problems += _value_problems(setting, entries)
        problems += [f"no description: {_key(where)}" for where, _, what in entries if not what]
    for path, entries in docs.values.items():
        if path not in settings:
            problems.append(f"not a setting: {_key(entries[0][0])}")
    return problems


def check_example(text: str, root: type[Any] = Settings) -> list[str]:
    """For the other pages: every key shown is a setting, and a value other than the default
    says so in its comment (it mentions the default, or that it is an example)."""
    docs, problems = documented(text, root)
    settings = {s.path: s for s in settings_fields(root)}
    for path, entries in docs.values.items():
        setting = settings.get(path)
        if setting is None:
            problems.append(f"not a setting: {_key(entries[0][0])}")
            continue
        problems += _value_problems(setting, entries, examples=True)
    return problems


def _value_problems(setting: Setting, entries: list[Entry], *, examples: bool = False) -> list[str]:
    """A setting shows its default; an example entry (or, with ``examples``, any setting) may
    show another value if the default is "not set" or its description says what the value is
    (the default, or an example)."""
    if setting.required:
        return []
    may_differ = examples or setting.in_entry
    if setting.in_entry and setting.default in ("", (), None):
        return []
    expected = _comparable(setting.default)
    return [
        f"wrong default: {_key(where)} = {_show(value)} (the default is {_toml(setting)})"
        for where, value, what in entries
        if _comparable(value) != expected and not (may_differ and _says_so(what))
    ]


def _says_so(description: str) -> bool:
    lowered = description.lower()
    return "default" in lowered or "example" in lowered


def _comparable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_comparable(v) for v in value]
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, msgspec.Struct):
        return _comparable(msgspec.to_builtins(value))
    return value


def _key(path: KeyPath) -> str:
    table = [str(p) for p in path[:-1] if not isinstance(p, int)]
    return (f"[{'.'.join(table)}] " if table else "") + str(path[-1])


def _toml(setting: Setting) -> str:
    return "(required)" if setting.required else _show(setting.default)


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return msgspec.json.encode(_comparable(value)).decode()


def suggestions(problems: list[str], root: type[Any] = Settings) -> list[str]:
    """TOML lines to paste for the missing settings, with their source comments."""
    settings = {_key(s.path): s for s in settings_fields(root)}
    lines = []
    for problem in problems:
        if not problem.startswith("missing: "):
            continue
        key = problem.removeprefix("missing: ").split(" = ")[0]
        setting = settings[key]
        table = ".".join(p for p in setting.path[:-1])
        what = setting.comment or "TODO: say what it does"
        lines.append(f"[{table}]  {setting.path[-1]} = {_toml(setting)}  # {what}")
    return lines


def main() -> int:
    """Check docs/configuration.md, and the settings the other pages show; 1 on a problem."""
    problems = check(DOC.read_text(encoding="utf-8"))
    others = {
        page: found
        for page in sorted(DOC.parent.glob("*.md"))
        if page != DOC and (found := check_example(page.read_text(encoding="utf-8")))
    }
    root = DOC.parents[1]
    if not problems and not others:
        print(f"{DOC.relative_to(root)} matches the settings (and so do the other pages)")
        return 0
    for page, found in [(DOC, problems), *others.items()]:
        if found:
            print(f"{page.relative_to(root)} does not match the settings classes:")
            print("".join(f"  {problem}\n" for problem in found), end="")
    pasted = suggestions(problems)
    if pasted:
        print("\nLines to add to docs/configuration.md (in their table's block):")
        print("".join(f"  {line}\n" for line in pasted), end="")
    return 1


if __name__ == "__main__":
    sys.exit(main())
