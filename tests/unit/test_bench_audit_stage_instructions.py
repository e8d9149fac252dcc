"""``benchmarks.audit_stage_instructions``' counted run, without callgrind: each request through
the stage leaves its decision and its outcome; ``--bare`` leaves none."""

from __future__ import annotations

from pathlib import Path

from benchmarks.audit_stage_instructions import WARM_UP, run
from broker.audit.records import decode_record


async def test_every_counted_request_leaves_its_two_records(tmp_path: Path) -> None:
    await run(32, 16, str(tmp_path))
    lines = (tmp_path / "audit-audit-stage-instr.jsonl").read_bytes().splitlines()
    phases = [decode_record(line).detail.get("phase") for line in lines]
    assert phases.count("forward") == phases.count("outcome") == WARM_UP + 32


async def test_the_bare_run_records_nothing(tmp_path: Path) -> None:
    assert await run(32, 16, str(tmp_path), bare=True) == 0
