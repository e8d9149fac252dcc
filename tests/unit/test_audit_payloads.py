"""Payloads are digests only, unless an agent is chosen for redacted payloads."""

from __future__ import annotations

import json
from pathlib import Path

from broker.audit.file_log import FileAuditLog
from broker.audit.recorder import AuditRecorder
from broker.audit.redact import REDACTED, redacted_payload
from broker.audit.trail import AuditTrail
from broker.identity.keys import BrokerKeys
from broker.settings import Settings
from testkit.audit_files import audit_text

BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "params": {
            "message": {"parts": [{"text": "hi, my token is Bearer abc.def"}]},
            "metadata": {"api_key": "sk-123", "note": "x" * 5000},
        },
    }
).encode()


def test_secrets_are_redacted_and_long_strings_cut() -> None:
    text = redacted_payload(BODY)
    assert "sk-123" not in text and "abc.def" not in text
    assert f'"api_key":"{REDACTED}"' in text
    assert "…[cut]" in text
    assert redacted_payload(b"not json") == ""


async def test_only_chosen_agents_get_payloads(tmp_path: Path) -> None:
    log = FileAuditLog(tmp_path, fsync=False)
    trail = await AuditTrail.open(log, "unit", BrokerKeys.from_settings(Settings()))
    recorder = AuditRecorder(trail, frozenset({"planner"}))
    for caller in ("planner", "writer"):
        await recorder.record(
            {
                "kind": "request",
                "caller": caller,
                "target": "x",
                "_body": BODY,
                "detail": {"phase": "forward"},
            }
        )
    await recorder.close()
    records = [
        json.loads(line) for line in audit_text(tmp_path / "audit-unit.jsonl").splitlines()
    ]
    by_caller = {r["caller"]: r for r in records if r["kind"] == "request"}
    assert "payload" in by_caller["planner"]["detail"]
    assert "sk-123" not in by_caller["planner"]["detail"]["payload"]
    assert "payload" not in by_caller["writer"]["detail"]
