"""How the ``a2a-broker`` commands answer: tables on a terminal, JSON for scripts.

* Data goes to standard output: a table when it is a terminal, JSON when it is not (a pipe, a
  file) or when ``--json`` is given. Times are ISO-8601 UTC in both (``2026-12-05T13:25:21.692Z``).
* A command that changes something says so in one line on standard error, so the data on
  standard output stays clean for scripts.
* A failure is one line on standard error (with ``--json``, the broker's error document).

Exit status (the same for every command; ``audit verify`` adds 10-17 for what it finds):

==  =====================================================================================
0   done
1   the command ran and failed: the broker refused, was unreachable, a chain is denied
2   the command line or the configuration is wrong (nothing was done)
3   ``serve`` / ``demo``: the broker could not start (port in use, start-up failure)
==  =====================================================================================
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANNOT_START = 3

# Fields of admin answers that hold epoch seconds; shown as ISO-8601 UTC.
TIME_FIELDS = frozenset(
    {"created_at", "updated_at", "window_start", "expires_at", "decided_at"}
)


def add_json_option(parser: argparse.ArgumentParser, *, leaf: bool = False) -> None:
    """``--json``; on a subcommand (``leaf``) it may also follow the subcommand's name."""
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if leaf else False,
        help="print JSON instead of a table (the default when standard output is not a terminal)",
    )


def iso_time(epoch_s: float) -> str:
    """``1795633412.327`` -> ``"2026-11-23T08:23:32.327Z"`` (UTC, milliseconds)."""
    moment = datetime.fromtimestamp(epoch_s, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def with_iso_times(value: Any) -> Any:
    """``value`` with every epoch-seconds field of ``TIME_FIELDS`` as an ISO-8601 string (0,
    "no time", becomes None)."""
    if isinstance(value, Mapping):
        return {k: _time_or_none(v) if k in TIME_FIELDS else with_iso_times(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [with_iso_times(item) for item in value]
    return value


def _time_or_none(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return iso_time(value) if value else None
    return value


Rows = Sequence[Sequence[Any]]


class Output:
    """Where one command's answer goes, and in which form."""

    def __init__(
        self, json: bool | None = None, out: TextIO | None = None, err: TextIO | None = None
    ) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.json = bool(json) or not _is_terminal(self.out)

    @classmethod
    def of(cls, args: argparse.Namespace) -> Output:
        return cls(getattr(args, "json", False))

    def data(self, value: Any, table: Callable[[Any], Iterable[Table]] | None = None) -> None:
        """``value`` (a JSON-able answer) as JSON, or as the tables ``table`` makes of it."""
        value = with_iso_times(value)
        if self.json or table is None:
            self.out.write(msgspec.json.format(msgspec.json.encode(value)).decode() + "\n")
            return
        for each in table(value):
            each.show(self.out)

    def done(self, message: str) -> None:
        """The one-line success message of a command that changed something."""
        self.err.write(message + "\n")
        self.err.flush()

    def fail(self, message: str, document: str | None = None) -> int:
        """A failure: ``document`` (the broker's error JSON) with ``--json``, else one line."""
        if self.json and document:
            self.err.write(document.rstrip("\n") + "\n")
        else:
            self.err.write(f"a2a-broker: {message}\n")
        return EXIT_FAILED


class Table:
    """A titled table of rows; rendered with rich on a terminal."""

    def __init__(self, columns: Sequence[str], rows: Rows, title: str = "") -> None:
        self.columns = columns
        self.rows = rows
        self.title = title

    def show(self, out: TextIO) -> None:
        from rich import box  # noqa: PLC0415 - only a terminal needs rich
        from rich.console import Console  # noqa: PLC0415
        from rich.table import Table as RichTable  # noqa: PLC0415

        table = RichTable(
            title=self.title or None,
            caption=None if self.rows else "(none)",
            box=box.SIMPLE_HEAD,
            title_justify="left",
            caption_justify="left",
        )
        for column in self.columns:
            table.add_column(column, overflow="fold")
        for row in self.rows:
            table.add_row(*(_cell(value) for value in row))
        Console(file=out, highlight=False).print(table)


def key_values(pairs: Mapping[str, Any], title: str = "") -> Table:
    """A two-column table of ``field``, ``value``."""
    return Table(("field", "value"), [(k, v) for k, v in pairs.items()], title)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value) or "-"
    return str(value)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
