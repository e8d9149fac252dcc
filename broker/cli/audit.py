"""``a2a-broker audit …``: argparse wiring for the functions in broker.cli.audit_commands.

Filters are checked here, so a bad one is an argparse error naming the valid forms: times are
ISO 8601, epoch seconds or a duration before now (``--since 1h``); decisions are ``allow`` or
``deny`` (``allowed``/``denied`` mean the same). ``tail`` and ``search`` print one aligned line
per record on a terminal (ISO-8601 times) and the records' JSON lines otherwise (or ``--json``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from broker.cli.output import add_json_option, iso_time

if TYPE_CHECKING:
    from broker.audit.records import AuditRecord
    from broker.audit.sources import RecordFilter

_TEXT_FILTERS = {
    "agent": "records where this agent is the caller, the target or in the chain",
    "task": "records of this request id, task tree or task id",
    "tree": "records of this task tree",
    "kind": "record kind, exact (request) or a prefix ending in '.' (auth.)",
    "replica": "records of this replica's chain only",
}
DECISIONS = ("allow", "deny")
_DECISION_SYNONYMS = {"allowed": "allow", "denied": "deny", "refused": "deny"}
_COLUMNS = ("time", "replica", "seq", "kind", "decision", "reason", "caller → target",
            "operation", "status")


def add_audit_parser(sub: Any) -> None:
    text = "verify, follow, search and export the audit log"
    audit = sub.add_parser("audit", help=text, description=text)
    cmds = audit.add_subparsers(title="audit commands", required=True, metavar="COMMAND")

    verify = _command(cmds, "verify", "check hashes, links, order and checkpoint signatures")
    _source(verify)
    verify.add_argument(
        "--keys", required=True, help="the broker's public keys: JWKS file or URL, or its PEM key"
    )
    verify.add_argument(
        "--checkpoint", help="a checkpoint kept elsewhere (JSON from `audit checkpoint`)"
    )
    verify.add_argument(
        "--witness",
        help="the broker's audit witness ([audit] witness): its folder or file, or a redis:// URL",
    )
    verify.add_argument(
        "--require-witness",
        action="store_true",
        help="exit 18 if nothing outside the log vouches for the end of a chain",
    )
    verify.set_defaults(run=_verify)

    kept = _command(cmds, "checkpoint", "print each chain's head, to keep elsewhere")
    _source(kept)
    kept.set_defaults(run=_checkpoint)

    tail = _command(cmds, "tail", "the last records (and, with -f, new ones as they come)")
    _source(tail)
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    tail.add_argument(
        "-n", "--lines", type=_positive, default=20, help="how many records (default 20)"
    )
    _filters(tail)
    add_json_option(tail)
    tail.set_defaults(run=_tail)

    search = _command(cmds, "search", "records matching filters, all chains merged by time")
    _source(search)
    _filters(search)
    add_json_option(search)
    search.set_defaults(run=_search)

    export = _command(cmds, "export", "write matching records as canonical JSON lines")
    _source(export)
    export.add_argument("--out", default="-", help="file to write ('-': standard output)")
    _filters(export)
    export.set_defaults(run=_export)


def _command(cmds: Any, name: str, text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = cmds.add_parser(name, help=text, description=text)
    return parser


def _source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="audit folder or file, or a redis:// URL")
    parser.add_argument("--prefix", default="a2ab", help="Redis key prefix ([store] key_prefix)")


def _filters(parser: argparse.ArgumentParser) -> None:
    for name, text in _TEXT_FILTERS.items():
        parser.add_argument(f"--{name}", default="", help=text)
    parser.add_argument(
        "--decision", type=_decision, choices=DECISIONS, default="",
        help="allow or deny (allowed, denied: the same)",
    )
    for name, when in (("since", "at or after"), ("until", "before")):
        parser.add_argument(
            f"--{name}", type=_time_us, default=0, metavar="TIME",
            help=f"records {when} TIME: ISO 8601 (2026-12-01T09:30:00Z), epoch seconds,"
            " or a time before now (30m, 1h, 2d)",
        )


def _decision(text: str) -> str:
    return _DECISION_SYNONYMS.get(text.strip().lower(), text.strip().lower())


def _time_us(text: str) -> int:
    from broker.audit.sources import AuditSourceError, parse_time_us  # noqa: PLC0415

    try:
        return parse_time_us(text)
    except AuditSourceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def _record_filter(args: argparse.Namespace) -> RecordFilter:
    from broker.audit.sources import RecordFilter  # noqa: PLC0415

    texts = {name: getattr(args, name) for name in _TEXT_FILTERS}
    return RecordFilter(**texts, decision=args.decision, since_us=args.since,
                        until_us=args.until)


def record_line(record: AuditRecord) -> str:
    """One aligned line per record for a terminal: time, chain position, what was decided."""
    hop = f"{record.caller or '-'} → {record.target or '-'}"
    operation = ":".join(part for part in (record.operation, record.skill) if part)
    cells = (iso_time(record.ts_us / 1_000_000), record.replica, str(record.seq), record.kind,
             record.decision or "-", record.reason or "-", hop, operation or "-",
             str(record.status or "-"))
    return _aligned(cells)


def _aligned(cells: tuple[str, ...]) -> str:
    widths = (24, 16, 6, 16, 8, 24, 28, 28, 6)
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def _render(args: argparse.Namespace) -> Any:
    """The records' own JSON lines for scripts, aligned lines (after a header) on a terminal."""
    if getattr(args, "json", False) or not sys.stdout.isatty():
        return None
    print(_aligned(_COLUMNS), flush=True)
    return record_line


def _verify(args: argparse.Namespace) -> int:
    from broker.cli import audit_commands as cli  # noqa: PLC0415

    return cli.verify(
        args.source, args.keys, args.checkpoint, witness=args.witness,
        require_witness=args.require_witness, prefix=args.prefix,
    )  # fmt: skip


def _checkpoint(args: argparse.Namespace) -> int:
    from broker.cli import audit_commands as cli  # noqa: PLC0415

    return cli.checkpoint(args.source, prefix=args.prefix)


def _tail(args: argparse.Namespace) -> int:
    from broker.cli import audit_commands as cli  # noqa: PLC0415

    return cli.tail(args.source, args.follow, _record_filter(args), lines=args.lines,
                    prefix=args.prefix, render=_render(args))


def _search(args: argparse.Namespace) -> int:
    from broker.cli import audit_commands as cli  # noqa: PLC0415

    return cli.search(args.source, _record_filter(args), prefix=args.prefix,
                      render=_render(args))


def _export(args: argparse.Namespace) -> int:
    from broker.cli import audit_commands as cli  # noqa: PLC0415

    return cli.export(args.source, args.out, _record_filter(args), prefix=args.prefix)
