"""The witness finds a cut-off tail without a hand-kept checkpoint; ``checkpoint`` and ``verify``
never exit 0 on what they did not understand; the exit codes are the ones docs/audit.md lists."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from broker.audit.file_log import FileAuditLog
from broker.audit.findings import EXIT_CODES, EXIT_OK, EXIT_UNVOUCHED, EXIT_USAGE, Finding
from broker.audit.recorder import open_recorder, open_witness
from broker.audit.trail import AuditTrail
from broker.audit.witness import FileWitness, RedisWitness, Witness, WitnessEntry, WitnessWriter
from broker.cli import audit_commands as cli
from broker.identity.keys import BrokerKeys, generate_signing_key_file, load_signing_key
from broker.settings import AuditSettings, Settings, StoreSettings

EVENTS = [{"kind": "request", "caller": f"agent-{n}", "decision": "allow"} for n in range(7)]


def run(function: object, *args: object, **kwargs: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = function(*args, out=out, err=err, **kwargs)  # type: ignore[operator]
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "broker-key.pem"
    generate_signing_key_file(path)
    return path


async def write_log(directory: Path, key_file: Path, witness: Witness | None) -> None:
    keys = BrokerKeys(load_signing_key(key_file))
    trail = await AuditTrail.open(
        FileAuditLog(directory, fsync=False), "r1", keys, checkpoint_every=3,
        witness=WitnessWriter(witness) if witness else None,
    )  # fmt: skip
    for event in EVENTS:
        await trail.record(event)
    await trail.close()  # signs (and witnesses) the last records


def cut(directory: Path, lines: int) -> None:
    path = directory / "audit-r1.jsonl"
    kept = path.read_bytes().splitlines(keepends=True)[:-lines]
    path.write_bytes(b"".join(kept))


def test_the_file_witness_finds_a_cut_tail_that_verifies_without_it(
    tmp_path: Path, key_file: Path
) -> None:
    log, witness = tmp_path / "audit", tmp_path / "witness"
    asyncio.run(write_log(log, key_file, FileWitness(witness)))
    code, out, err = run(cli.verify, str(log), str(key_file), witness=str(witness))
    assert code == EXIT_OK and "vouched for up to seq 10" in out and err == ""

    cut(log, 4)  # the last checkpoint and the records before it: what is left still verifies
    code, out, err = run(cli.verify, str(log), str(key_file))
    assert code == EXIT_OK
    assert "NOTHING outside the log vouches for its end" in out
    assert err.startswith("WARNING: r1: nothing outside the log vouches for where this chain")
    assert run(cli.verify, str(log), str(key_file), require_witness=True)[0] == EXIT_UNVOUCHED
    code, out, _ = run(cli.verify, str(log), str(key_file), witness=str(witness))
    assert code == EXIT_CODES[Finding.TRUNCATED]
    assert "r1: TRUNCATED" in out and "kept checkpoint is at seq 10" in out
    one_file = witness / "witness-r1.jsonl"
    assert run(cli.verify, str(log), str(key_file), witness=str(one_file))[0] == 14


async def test_the_redis_witness_finds_a_cut_tail_and_never_goes_back(
    tmp_path: Path, key_file: Path, redis_url: str, redis_key_prefix: str
) -> None:
    log = tmp_path / "audit"
    await write_log(log, key_file, RedisWitness(redis_url, redis_key_prefix))
    cut(log, 2)
    code, out, _ = await asyncio.to_thread(
        run, cli.verify, str(log), str(key_file), witness=redis_url, prefix=redis_key_prefix
    )
    assert code == 14, out
    witness = RedisWitness(redis_url, redis_key_prefix)
    try:
        await witness.write(WitnessEntry(replica="r1", seq=3, hash="sha256:old", ts_us=1))
        assert (await witness.latest())["r1"].seq == 10  # an older entry never replaces it
    finally:
        await witness.close()


def test_a_missing_or_unreadable_witness_is_a_usage_error(tmp_path: Path, key_file: Path) -> None:
    log = tmp_path / "audit"
    asyncio.run(write_log(log, key_file, None))
    assert run(cli.verify, str(log), str(key_file), witness=str(tmp_path / "none"))[0] == 2
    bad = tmp_path / "witness-r1.jsonl"
    bad.write_text("not an entry\n{}\n")
    code, _, err = run(cli.verify, str(log), str(key_file), witness=str(bad))
    assert code == EXIT_USAGE and "line 1" in err


def test_checkpoint_reads_one_chain_file_whatever_its_name(tmp_path: Path, key_file: Path) -> None:
    log = tmp_path / "audit"
    asyncio.run(write_log(log, key_file, None))
    copy = tmp_path / "exported copy.log"
    shutil.copy(log / "audit-r1.jsonl", copy)
    last = json.loads(copy.read_bytes().splitlines()[-1])
    code, out, _ = run(cli.checkpoint, str(copy))
    assert code == 0
    assert json.loads(out) == {"replica": "r1", "seq": last["seq"], "hash": last["hash"]}
    with copy.open("ab") as torn:  # a crash mid-write: the broker would cut this line
        torn.write(b'{"v":1,"seq":')
    assert run(cli.checkpoint, str(copy))[1] == out
    assert run(cli.verify, str(copy), str(key_file), out)[0] == 14  # and verify says so


@pytest.mark.parametrize("content", [b"", b"\n", b"not a record\n", b'{"seq": 1}\n'])
def test_checkpoint_never_succeeds_on_a_file_it_did_not_understand(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "whatever.jsonl"
    path.write_bytes(content)
    code, out, err = run(cli.checkpoint, str(path))
    assert (code, out) == (EXIT_USAGE, "")
    assert str(path) in err


def test_checkpoint_of_a_folder_without_audit_files_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    code, out, err = run(cli.checkpoint, str(tmp_path))
    assert (code, out) == (EXIT_USAGE, "")
    assert "no audit records" in err


def test_verify_refuses_a_checkpoint_it_cannot_use(tmp_path: Path, key_file: Path) -> None:
    log = tmp_path / "audit"
    asyncio.run(write_log(log, key_file, None))
    one_file = str(log / "audit-r1.jsonl")
    empty = tmp_path / "kept.json"
    empty.write_text("")
    for source in (str(log), one_file):
        code, _, err = run(cli.verify, source, str(key_file), str(empty))
        assert code == EXIT_USAGE and "holds no checkpoint" in err
    other = json.dumps({"replica": "r9", "seq": 3, "hash": "sha256:" + "0" * 64})
    code, _, err = run(cli.verify, one_file, str(key_file), other)
    assert code == EXIT_USAGE and "r9" in err  # the wrong file, or the wrong checkpoint
    # In a folder, a replica with no records at all lost its whole chain:
    code, out, _ = run(cli.verify, str(log), str(key_file), other)
    assert code == EXIT_CODES[Finding.TRUNCATED] and "r9: TRUNCATED" in out


def test_the_exit_codes_are_the_ones_docs_audit_md_lists() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "audit.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) \| `?([a-z_—-]+)`? \|", doc, re.MULTILINE))
    documented = {int(code): name for code, name in rows.items()}
    expected = {code: finding.value for finding, code in EXIT_CODES.items()}
    assert {c: n for c, n in documented.items() if c >= 10} == {**expected, EXIT_UNVOUCHED:
                                                                "unvouched"}  # fmt: skip
    assert {EXIT_OK, EXIT_USAGE} <= documented.keys()


def test_a_forged_record_inserted_by_hand_is_an_insertion(tmp_path: Path, key_file: Path) -> None:
    """The issue's case: a copy of a real record, edited and written back with json.dumps."""
    log = tmp_path / "audit"
    asyncio.run(write_log(log, key_file, None))
    path = log / "audit-r1.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    forged = {**json.loads(lines[2]), "caller": "mallory"}
    lines.insert(3, json.dumps(forged).encode() + b"\n")
    path.write_bytes(b"".join(lines))
    code, out, _ = run(cli.verify, str(log), str(key_file))
    assert code == EXIT_CODES[Finding.INSERTED] == 12
    assert "r1: INSERTED at seq 3 (line 4)" in out


async def test_the_broker_witnesses_its_checkpoints_where_the_settings_say(
    tmp_path: Path, key_file: Path
) -> None:
    audit = AuditSettings(dir="log", witness_dir="witness", replica="r1", fsync=False)
    settings = Settings(audit=audit, base_dir=str(tmp_path))
    recorder = await open_recorder(settings, BrokerKeys(load_signing_key(key_file)))
    await recorder.event("killswitch", "admin", action="global.kill")
    await recorder.close()  # the last checkpoint is signed and witnessed
    code, out, _ = await asyncio.to_thread(
        run, cli.verify, str(tmp_path / "log"), str(key_file), witness=str(tmp_path / "witness")
    )
    assert code == 0 and "vouched for up to seq 2" in out


def test_auto_puts_the_witness_outside_the_log() -> None:
    redis = StoreSettings(backend="redis")
    assert isinstance(open_witness(Settings(store=redis)), RedisWitness)
    on_redis_log = Settings(store=redis, audit=AuditSettings(backend="redis"))
    assert isinstance(open_witness(on_redis_log), FileWitness)
    assert isinstance(open_witness(Settings()), FileWitness)
    assert open_witness(Settings(audit=AuditSettings(witness="off"))) is None
