"""The audit command functions, as an operator runs them on a log folder or a Redis URL."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from broker.audit.file_log import FileAuditLog
from broker.audit.log import AuditLog
from broker.audit.redis_log import RedisAuditLog
from broker.audit.trail import AuditTrail
from broker.cli import audit_commands as cli
from broker.identity.keys import BrokerKeys, generate_signing_key_file, load_signing_key

# Later than the checkpoints (stamped now): timestamps never run backwards within a chain.
T0 = 4_000_000_000 * 1_000_000
EVENTS = [
    {"kind": "request", "caller": "alice", "target": "bob", "decision": "allow", "tree": "t1",
     "ts_us": T0 + 1_000_000},
    {"kind": "request", "caller": "bob", "target": "carol", "chain": ["alice", "bob"],
     "decision": "deny", "tree": "t1", "ts_us": T0 + 2_000_000},
    {"kind": "auth.failure", "caller": "", "reason": "INVALID_CREDENTIAL", "ts_us": T0 + 3_000_000},
    {"kind": "token.mint", "caller": "alice", "target": "bob", "ts_us": T0 + 4_000_000,
     "detail": {"task_id": "task-9"}},
]


async def fill(log: AuditLog, keys: BrokerKeys) -> None:
    for replica in ("r1", "r2"):
        trail = await AuditTrail.open(log, replica, keys, checkpoint_every=2)
        for event in EVENTS:
            await trail.record(event)
    await log.close()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "broker-key.pem"
    generate_signing_key_file(path)
    return path


@pytest.fixture
def log_dir(tmp_path: Path, key_file: Path) -> Path:
    directory = tmp_path / "audit"
    asyncio.run(fill(FileAuditLog(directory), BrokerKeys(load_signing_key(key_file))))
    return directory


def run(function: object, *args: object, **kwargs: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = function(*args, out=out, err=err, **kwargs)  # type: ignore[operator]
    return code, out.getvalue(), err.getvalue()


def test_verify_with_the_broker_key_file_and_with_a_jwks(
    log_dir: Path, key_file: Path, tmp_path: Path
) -> None:
    code, out, _ = run(cli.verify, str(log_dir), str(key_file))
    assert code == 0
    assert out.splitlines()[0].startswith("r1: ok, 6 records, 2 checkpoints")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(BrokerKeys(load_signing_key(key_file)).jwks()))
    assert run(cli.verify, str(log_dir), str(jwks))[0] == 0


def test_verify_exit_codes_name_the_alteration(log_dir: Path, key_file: Path) -> None:
    code, out, _ = run(cli.checkpoint, str(log_dir))
    kept = out.splitlines()
    assert [json.loads(line)["replica"] for line in kept] == ["r1", "r2"]
    path = log_dir / "audit-r2.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-2]))
    assert run(cli.verify, str(log_dir), str(key_file))[0] == 0  # a cut tail looks fine ...
    code, out, _ = run(cli.verify, str(log_dir), str(key_file), "[" + ",".join(kept) + "]")
    assert code == 14  # ... unless the operator kept the head
    assert "r2: TRUNCATED" in out
    kept_file = log_dir.parent / "kept.jsonl"
    kept_file.write_text("\n".join(kept) + "\n")
    assert run(cli.verify, str(log_dir), str(key_file), str(kept_file))[0] == 14
    path.write_bytes(b"".join([lines[0], *lines[2:]]))
    assert run(cli.verify, str(log_dir), str(key_file))[0] == 11


def test_verify_usage_errors_exit_2(log_dir: Path, tmp_path: Path) -> None:
    code, _, err = run(cli.verify, str(log_dir), str(tmp_path / "missing.pem"))
    assert code == 2
    assert "missing.pem" in err
    assert run(cli.verify, str(tmp_path / "nothing-here"), str(log_dir))[0] == 2


def test_search_filters_by_agent_decision_kind_task_and_time(log_dir: Path) -> None:
    def found(**options: str) -> list[dict[str, object]]:
        code, out, _ = run(cli.search, str(log_dir), **options)
        assert code == 0
        return [json.loads(line) for line in out.splitlines()]

    assert len(found()) == 2 * 6  # 4 events and 2 checkpoints per replica
    assert {r["kind"] for r in found(agent="carol")} == {"request"}
    assert len(found(agent="alice")) == 6  # caller, and in the chain
    assert [r["decision"] for r in found(decision="deny", replica="r1")] == ["deny"]
    assert len(found(kind="auth.")) == 2
    assert len(found(task="task-9")) == 2
    assert len(found(tree="t1", until="2096-10-02T07:06:42")) == 2
    # events 2 and 3, and the checkpoint after event 2 (stamped no earlier than it)
    assert len(found(since="4000000002", until="4000000004")) == 2 * 3
    times = [r["ts_us"] for r in found()]
    assert times == sorted(times)  # replicas merged by time


def test_export_writes_a_verifiable_copy(log_dir: Path, key_file: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "copy"
    out_dir.mkdir()
    filters = cli.RecordFilter(replica="r1")
    assert cli.export(str(log_dir), str(out_dir / "audit-r1.jsonl"), filters) == 0
    assert run(cli.verify, str(out_dir), str(key_file))[0] == 0
    exported = tmp_path / "r1-export.jsonl"
    assert cli.export(str(log_dir), str(exported), filters) == 0
    code, out, _ = run(cli.verify, str(exported), str(key_file))
    assert (code, out.split(":")[0]) == (0, "r1")


def test_tail_prints_the_last_records(log_dir: Path) -> None:
    code, out, _ = run(cli.tail, str(log_dir), False, cli.RecordFilter(replica="r1"), lines=2)
    assert code == 0
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [5, 6]


def test_verify_a_redis_log(redis_url: str, redis_key_prefix: str, key_file: Path) -> None:
    keys = BrokerKeys(load_signing_key(key_file))
    asyncio.run(fill(RedisAuditLog(redis_url, redis_key_prefix), keys))
    code, out, _ = run(cli.verify, redis_url, str(key_file), prefix=redis_key_prefix)
    assert code == 0, out
    assert out.count(": ok") == 2


def test_verify_counts_one_checkpoint_in_the_singular(tmp_path: Path, key_file: Path) -> None:
    async def one_checkpoint() -> None:
        log = FileAuditLog(tmp_path / "one")
        trail = await AuditTrail.open(
            log, "r1", BrokerKeys(load_signing_key(key_file)), checkpoint_every=1
        )
        await trail.record(EVENTS[0])
        await log.close()

    asyncio.run(one_checkpoint())

    code, out, _ = run(cli.verify, str(tmp_path / "one"), str(key_file))

    assert code == 0
    assert out.startswith("r1: ok, 2 records, 1 checkpoint, ")


def test_export_says_how_many_records_it_wrote(log_dir: Path, tmp_path: Path) -> None:
    err = io.StringIO()
    target = tmp_path / "r1.jsonl"

    code = cli.export(str(log_dir), str(target), cli.RecordFilter(replica="r1"), err=err)

    assert code == 0
    assert err.getvalue() == f"audit export: wrote 6 records to {target}\n"
    assert len(target.read_text().splitlines()) == 6
