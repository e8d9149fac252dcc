"""Runs last in the e2e folder (file order): every request the session broker mediated, in all
the tests before, left exactly the audit records it should.

The broker's access log has one line per mediated request; the audit must hold, for each, either
one refusal record, or one decision (phase forward) and one outcome. Nothing more, nothing less.
"""

from __future__ import annotations

import collections
import json
import time

from .conftest import Broker


def _access_lines(broker: Broker) -> list[dict[str, object]]:
    lines = broker.log.read_text().splitlines()
    return [json.loads(line) for line in lines if '"event":"mediated"' in line]


def _phases(broker: Broker) -> dict[str, collections.Counter[str]]:
    phases: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for path in (broker.log.parent / "var" / "audit").glob("audit-*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["request_id"]:
                phases[record["request_id"]][record["detail"]["phase"]] += 1
    return phases


def _mismatches(broker: Broker) -> list[str]:
    phases = _phases(broker)
    wrong = []
    for line in _access_lines(broker):
        rid = str(line["request_id"])
        seen = phases.get(rid, collections.Counter())
        forwarded = seen["forward"] > 0
        expected = {"forward": 1, "outcome": 1} if forwarded else {"refused": 1}
        if dict(seen) != expected:
            wrong.append(f"{rid} ({line.get('operation')}, {line.get('error')}): {dict(seen)}")
    return wrong


def test_every_mediated_request_has_exactly_its_records(broker: Broker) -> None:
    assert len(_access_lines(broker)) > 100  # the whole session's traffic, not a sample
    deadline = time.monotonic() + 5
    while (wrong := _mismatches(broker)) and time.monotonic() < deadline:
        time.sleep(0.1)  # outcomes of the last streams are appended just after they end
    assert not wrong, "\n".join(wrong[:20])
