"""The ``a2a-broker audit`` commands as functions; the CLI module wires them to argparse.

Each returns the process exit code and writes results to ``out`` (JSON lines for records) and
problems to ``err``. ``verify`` returns 0 when every chain verifies, else the code of the first
chain's finding (10 edited ... 17 malformed, see ``findings.EXIT_CODES``); 2 is a usage or I/O
error. ``source`` is a folder of ``audit-<replica>.jsonl`` files (or one such file), or a Redis
URL; ``prefix`` is the Redis key prefix (the broker's ``[store] key_prefix``).
"""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TextIO

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.audit.file_log import audit_file
from broker.audit.findings import EXIT_OK, EXIT_USAGE
from broker.audit.log import AuditLog, AuditLogError
from broker.audit.records import AuditRecord, KeptCheckpoint, encode_record
from broker.audit.sources import (
    AuditSourceError,
    RecordFilter,
    file_lines,
    is_redis,
    load_checkpoints,
    load_public_keys,
    open_log,
)
from broker.audit.verify import VerifyReport, averify_chain, verify_chain

_ENCODER = msgspec.json.Encoder()
Render = Callable[[AuditRecord], str]


def verify(
    source: str,
    keys_source: str,
    checkpoint: str | None = None,
    *,
    replica: str | None = None,
    prefix: str = "a2ab",
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Verify every chain in ``source`` (or only ``replica``) with the keys from ``keys_source``
    and the kept checkpoint(s) in ``checkpoint`` (a JSON file or inline JSON)."""
    try:
        keys = load_public_keys(keys_source)
        kept = load_checkpoints(checkpoint) if checkpoint else {}
        if Path(source).is_file():  # one chain file, whatever its name (an export, a copy)
            reports = [_verify_file(Path(source), keys, kept, replica)]
        else:
            reports = asyncio.run(_verify_all(source, keys, kept, replica, prefix))
    except (AuditSourceError, AuditLogError) as exc:
        err.write(f"audit verify: {exc}\n")
        return EXIT_USAGE
    for report in reports:
        out.write(_describe(report) + "\n")
    return next((r.exit_code for r in reports if not r.ok), EXIT_OK)


async def _verify_all(
    source: str,
    keys: Mapping[str, Ed25519PublicKey],
    kept: Mapping[str, KeptCheckpoint],
    replica: str | None,
    prefix: str,
) -> list[VerifyReport]:
    log = open_log(source, prefix)
    try:
        names = [replica] if replica else sorted({*await log.replicas(), *kept})
        if not names:
            raise AuditSourceError(f"no audit records in {source}")
        reports = []
        for name in names:
            if is_redis(source):
                report = await averify_chain(log.read_raw(name), keys, kept.get(name))
            else:
                path = audit_file(Path(source), name)
                lines = file_lines(path) if path.exists() else iter(())
                report = verify_chain(lines, keys, kept.get(name), newline_terminated=True)
            reports.append(msgspec.structs.replace(report, replica=name))
        return reports
    finally:
        await log.close()


def _verify_file(
    path: Path,
    keys: Mapping[str, Ed25519PublicKey],
    kept: Mapping[str, KeptCheckpoint],
    replica: str | None,
) -> VerifyReport:
    expected = kept.get(replica or _first_replica(path))
    return verify_chain(file_lines(path), keys, expected, newline_terminated=True)


def _first_replica(path: Path) -> str:
    first = next(file_lines(path), b"")
    try:
        value = msgspec.json.decode(first)
    except msgspec.DecodeError:
        return ""
    replica = value.get("replica") if isinstance(value, dict) else None
    return replica if isinstance(replica, str) else ""


def _describe(report: VerifyReport) -> str:
    if report.ok:
        unsigned = report.last_seq - report.signed_seq
        return (f"{report.replica}: ok, {_count(report.last_seq, 'record')}, "
                f"{_count(report.checkpoints, 'checkpoint')}, {unsigned} after the last checkpoint")
    return (f"{report.replica}: {report.kind.upper()} at seq {report.seq} (line {report.line}): "
            f"{report.message}")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def checkpoint(
    source: str, replica: str | None = None, *, prefix: str = "a2ab", out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Print the current head of each chain as ``{"replica","seq","hash"}`` for safekeeping."""
    async def heads() -> list[KeptCheckpoint]:
        log = open_log(source, prefix)
        try:
            names = [replica] if replica else await log.replicas()
            found = [(name, await log.head(name)) for name in names]
            return [KeptCheckpoint(name, head.seq, head.hash) for name, head in found if head]
        finally:
            await log.close()

    try:
        for kept in asyncio.run(heads()):
            out.write(_ENCODER.encode(kept).decode() + "\n")
    except (AuditSourceError, AuditLogError) as exc:
        err.write(f"audit checkpoint: {exc}\n")
        return EXIT_USAGE
    return EXIT_OK


def search(
    source: str, filters: RecordFilter | None = None, *, prefix: str = "a2ab",
    out: TextIO = sys.stdout, err: TextIO = sys.stderr, render: Render | None = None,
    **options: str | None,
) -> int:
    """Print the records that match, all replicas merged by time, as JSON lines (or as
    ``render`` makes each one a line).

    ``options``: agent, task, tree, since, until, decision, kind, replica (see ``RecordFilter``).
    """
    try:
        chosen = filters or RecordFilter.from_options(options)
        asyncio.run(_copy(source, prefix, chosen, out, render or canonical_line))
    except (AuditSourceError, AuditLogError) as exc:
        err.write(f"audit search: {exc}\n")
        return EXIT_USAGE
    return EXIT_OK


def export(
    source: str, out_path: str, filters: RecordFilter | None = None, *, prefix: str = "a2ab",
    err: TextIO = sys.stderr,
) -> int:
    """Write the matching records to ``out_path`` ("-": stdout) as canonical JSON lines.

    Unfiltered, one replica's export is a verifiable copy of its chain.
    """
    chosen = filters or RecordFilter()
    try:
        if out_path == "-":
            count = asyncio.run(_copy(source, prefix, chosen, sys.stdout, canonical_line))
        else:
            with Path(out_path).open("w", encoding="utf-8") as out:
                count = asyncio.run(_copy(source, prefix, chosen, out, canonical_line))
    except (AuditSourceError, AuditLogError, OSError) as exc:
        err.write(f"audit export: {exc}\n")
        return EXIT_USAGE
    where = "standard output" if out_path == "-" else out_path
    err.write(f"audit export: wrote {_count(count, 'record')} to {where}\n")
    return EXIT_OK


def tail(
    source: str, follow: bool = False, filters: RecordFilter | None = None, *, lines: int = 20,
    poll_s: float = 0.5, prefix: str = "a2ab", out: TextIO = sys.stdout,
    err: TextIO = sys.stderr, render: Render | None = None,
) -> int:
    """Print the last ``lines`` matching records; with ``follow``, then new ones as they come
    (until interrupted). Each is a JSON line, or what ``render`` makes of it."""
    try:
        asyncio.run(_tail(source, follow, filters or RecordFilter(), lines=lines, poll_s=poll_s,
                          prefix=prefix, out=out, render=render or canonical_line))
    except (AuditSourceError, AuditLogError) as exc:
        err.write(f"audit tail: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def canonical_line(record: AuditRecord) -> str:
    """The record as stored: its canonical JSON."""
    return encode_record(record).decode()


async def _copy(
    source: str, prefix: str, filters: RecordFilter, out: TextIO, render: Render
) -> int:
    """Write the matching records; how many there were."""
    count = 0
    log = open_log(source, prefix)
    try:
        async for record in log.read(filters.replica or None):
            if filters.matches(record):
                out.write(render(record) + "\n")
                count += 1
    finally:
        await log.close()
    return count


async def _tail(
    source: str, follow: bool, filters: RecordFilter, *, lines: int, poll_s: float, prefix: str,
    out: TextIO, render: Render,
) -> None:
    log = open_log(source, prefix)
    try:
        last: collections.deque[AuditRecord] = collections.deque(maxlen=lines)
        positions: dict[str, int] = {}
        async for record in log.read(filters.replica or None):
            positions[record.replica] = record.seq
            if filters.matches(record):
                last.append(record)
        for record in last:
            out.write(render(record) + "\n")
        out.flush()
        while follow:
            await asyncio.sleep(poll_s)
            async for record in _new_records(log, positions, filters.replica):
                if filters.matches(record):
                    out.write(render(record) + "\n")
            out.flush()
    finally:
        await log.close()


async def _new_records(
    log: AuditLog, positions: dict[str, int], replica: str
) -> AsyncIterator[AuditRecord]:
    for name in [replica] if replica else await log.replicas():
        async for record in log.read(name, positions.get(name, 0)):
            positions[name] = record.seq
            yield record
