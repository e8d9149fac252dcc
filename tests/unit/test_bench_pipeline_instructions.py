"""``benchmarks.pipeline_instructions``' counted run, without callgrind: every request goes the
whole metered path (each is charged to the caller's calls budget, as in scenario (e))."""

from __future__ import annotations

from pathlib import Path

from benchmarks.pipeline_instructions import WARM_UP, run
from broker.audit.records import decode_record


async def test_every_counted_request_is_answered_and_charged() -> None:
    assert await run(32, 16) == WARM_UP + 32


async def test_with_the_audit_on_every_request_leaves_its_two_records(tmp_path: Path) -> None:
    assert await run(32, 16, "written", str(tmp_path)) == WARM_UP + 32
    lines = (tmp_path / "audit-pipeline-instr.jsonl").read_bytes().splitlines()
    phases = [decode_record(line).detail.get("phase") for line in lines]
    assert phases.count("forward") == phases.count("outcome") == WARM_UP + 32
