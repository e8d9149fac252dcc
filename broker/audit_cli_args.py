"""``a2a-broker audit …``: argparse wiring for the functions in broker.audit.cli."""

from __future__ import annotations

import argparse
from typing import Any

_FILTERS = ("agent", "task", "tree", "since", "until", "decision", "kind", "replica")


def add_audit_parser(sub: Any) -> None:
    audit = sub.add_parser("audit", help="verify, follow, search and export the audit log")
    cmds = audit.add_subparsers(title="audit commands", required=True)

    verify = cmds.add_parser("verify", help="check hashes, links, order and checkpoint signatures")
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

    kept = cmds.add_parser("checkpoint", help="print each chain's head, to keep elsewhere")
    _source(kept)
    kept.set_defaults(run=_checkpoint)

    tail = cmds.add_parser("tail", help="the last records (and, with -f, new ones as they come)")
    _source(tail)
    tail.add_argument("-f", "--follow", action="store_true")
    tail.add_argument("-n", "--lines", type=int, default=20)
    _filters(tail)
    tail.set_defaults(run=_tail)

    search = cmds.add_parser("search", help="records matching filters, all chains by time")
    _source(search)
    _filters(search)
    search.set_defaults(run=_search)

    export = cmds.add_parser("export", help="write matching records as canonical JSON lines")
    _source(export)
    export.add_argument("--out", default="-", help="file to write ('-': standard output)")
    _filters(export)
    export.set_defaults(run=_export)


def _source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="audit folder or file, or a redis:// URL")
    parser.add_argument("--prefix", default="a2ab", help="Redis key prefix ([store] key_prefix)")


def _filters(parser: argparse.ArgumentParser) -> None:
    for name in _FILTERS:
        parser.add_argument(f"--{name}", default=None)


def _options(args: argparse.Namespace) -> dict[str, str | None]:
    return {name: getattr(args, name) for name in _FILTERS}


def _verify(args: argparse.Namespace) -> int:
    from broker.audit import cli  # noqa: PLC0415

    return cli.verify(
        args.source, args.keys, args.checkpoint, witness=args.witness,
        require_witness=args.require_witness, prefix=args.prefix,
    )  # fmt: skip


def _checkpoint(args: argparse.Namespace) -> int:
    from broker.audit import cli  # noqa: PLC0415

    return cli.checkpoint(args.source, prefix=args.prefix)


def _tail(args: argparse.Namespace) -> int:
    from broker.audit import cli  # noqa: PLC0415
    from broker.audit.sources import RecordFilter  # noqa: PLC0415

    filters = RecordFilter.from_options(_options(args))
    return cli.tail(args.source, args.follow, filters, lines=args.lines, prefix=args.prefix)


def _search(args: argparse.Namespace) -> int:
    from broker.audit import cli  # noqa: PLC0415
    from broker.audit.sources import RecordFilter  # noqa: PLC0415

    filters = RecordFilter.from_options(_options(args))
    return cli.search(args.source, filters, prefix=args.prefix)


def _export(args: argparse.Namespace) -> int:
    from broker.audit import cli  # noqa: PLC0415
    from broker.audit.sources import RecordFilter  # noqa: PLC0415

    filters = RecordFilter.from_options(_options(args))
    return cli.export(args.source, args.out, filters, prefix=args.prefix)
