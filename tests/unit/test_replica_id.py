"""The default audit replica id: the same after a restart, never shared by two live processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from broker.audit.replica_id import claim_default_replica

REPO_ROOT = Path(__file__).resolve().parents[2]


def _claim_in_a_process(lock_dir: Path, hold_s: float = 0.0) -> subprocess.Popen[str]:
    code = (
        "import sys, time\nfrom pathlib import Path\n"
        "from broker.audit.replica_id import claim_default_replica\n"
        f"print(claim_default_replica(8080, Path({str(lock_dir)!r}), host='web1'), flush=True)\n"
        f"time.sleep({hold_s})\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )


def _name_of(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def test_a_restarted_process_takes_the_same_name(tmp_path: Path) -> None:
    names = []
    for _ in range(2):
        process = _claim_in_a_process(tmp_path)
        names.append(_name_of(process))
        assert process.wait(timeout=30) == 0

    assert names == ["web1-8080", "web1-8080"]


def test_two_live_processes_never_share_a_name(tmp_path: Path) -> None:
    first = _claim_in_a_process(tmp_path, hold_s=30)
    try:
        assert _name_of(first) == "web1-8080"
        assert claim_default_replica(8080, tmp_path, host="web1") == "web1-8080-2"
        assert claim_default_replica(8080, tmp_path, host="web1") == "web1-8080-3"
        assert claim_default_replica(9090, tmp_path, host="web1") == "web1-9090"
    finally:
        first.kill()
        first.wait()


def test_names_fit_the_audit_replica_pattern(tmp_path: Path) -> None:
    assert claim_default_replica(8080, tmp_path, host="my host!.example") == (
        "my-host-.example-8080"
    )
    long_name = claim_default_replica(1, tmp_path, host="h" * 100)
    assert len(long_name) <= 61 and long_name.endswith("-1")


def test_a_restarted_broker_continues_its_chain(tmp_path: Path) -> None:
    """Two broker processes, one after the other, with the default replica: one chain file."""
    (tmp_path / "locks").mkdir()
    config = tmp_path / "broker.toml"
    config.write_text("[server]\nport = 18080\n[audit]\nfsync = false\n")
    code = (
        "import asyncio, sys\n"
        "from broker.audit.recorder import open_recorder\n"
        "from broker.identity.keys import BrokerKeys\n"
        "from broker.settings import load_settings\n"
        "async def main():\n"
        "    settings = load_settings(sys.argv[1], environ={})\n"
        "    audit = await open_recorder(settings, BrokerKeys.from_settings(settings))\n"
        "    await audit.event('registry.change', 'admin', action='register', agent='a')\n"
        "    await audit.close()\n"
        "asyncio.run(main())\n"
    )
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-c", code, str(config)], cwd=REPO_ROOT, check=True, timeout=60,
            env={"TMPDIR": str(tmp_path / "locks"), "PATH": "/usr/bin:/bin"},
        )

    files = list((tmp_path / "var" / "audit").glob("audit-*.jsonl"))
    assert len(files) == 1 and files[0].name.endswith("-18080.jsonl"), files
    records = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))  # one chain
    assert [r["detail"].get("agent") for r in records if r["kind"] == "registry.change"] == [
        "a", "a"
    ]
