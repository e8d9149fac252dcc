"""The shared process harness and config builder (testkit/) that e2e tests and benchmarks use."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from testkit.config import BrokerConfig, InvalidConfigError, budget, credential_sha256
from testkit.procs import Process, ProcessStartError, free_port, local_url


def test_defaults_are_the_test_defaults(tmp_path: Path) -> None:
    config = BrokerConfig(port=4321)
    loaded = tomllib.loads(config.write(tmp_path / "b.toml").read_text())
    assert loaded == {
        "server": {"host": "127.0.0.1", "port": 4321},
        "egress": {"allow_loopback": True},
        "policy": {"allow_all": True},
    }


def test_tables_keys_and_values_render_as_the_loader_reads_them(tmp_path: Path) -> None:
    config = BrokerConfig(port=1)
    config.set("limits", max_body_bytes=65536, upstream_timeout_s=1.5)
    config.set("containment.agent_max_concurrent", **{"gated-capped": 2})
    config.set("budgets.agents", alice=[budget("calls", "day", 100)])
    config.set("audit.export", enabled=True, sinks=[{"name": "s", "kind": "jsonl", "path": "x"}])
    config.use_redis("redis://127.0.0.1:1/0", key_prefix="p").use_policy_file(tmp_path / "p.csv")
    config.identities({"carol": "secret"})
    loaded = tomllib.loads(config.write(tmp_path / "b.toml").read_text())
    assert loaded["limits"] == {"max_body_bytes": 65536, "upstream_timeout_s": 1.5}
    assert loaded["containment"] == {"agent_max_concurrent": {"gated-capped": 2}}
    assert loaded["budgets"]["agents"]["alice"] == [
        {"metric": "calls", "window": "day", "limit": 100}
    ]
    assert loaded["audit"]["export"]["sinks"] == [{"name": "s", "kind": "jsonl", "path": "x"}]
    assert loaded["store"]["backend"] == "redis"
    assert loaded["policy"] == {"policy_file": str(tmp_path / "p.csv")}  # allow_all removed
    assert loaded["agents"]["carol"]["credential_sha256"] == credential_sha256("secret")


def test_a_misspelt_key_fails_when_the_file_is_written(tmp_path: Path) -> None:
    config = BrokerConfig(port=1).set("limits", max_body_byte=10)
    with pytest.raises(InvalidConfigError, match="max_body_byte"):
        config.write(tmp_path / "b.toml")


def test_an_upstream_secret_is_checked_in_the_environment_given(tmp_path: Path) -> None:
    config = BrokerConfig(port=1).set("upstream_credentials.echo", kind="bearer", env="TK_TOKEN")
    with pytest.raises(InvalidConfigError, match="TK_TOKEN"):
        config.write(tmp_path / "b.toml", env={})
    config.write(tmp_path / "b.toml", env={"TK_TOKEN": "x"})


def test_a_copy_on_another_port_leaves_the_original_alone() -> None:
    config = BrokerConfig(port=1).set("limits", max_body_bytes=10)
    twin = config.copy(port=2).set("limits", max_body_bytes=20)
    assert (config.port, config.tables["server"]["port"]) == (1, 1)
    assert (twin.port, twin.tables["server"]["port"]) == (2, 2)
    assert config.tables["limits"] == {"max_body_bytes": 10}


def _http_server(port: int) -> list[str]:
    return [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]


def test_a_process_is_ready_logged_and_stopped(tmp_path: Path) -> None:
    port = free_port()
    with Process.start(
        _http_server(port), ready_url=local_url(port), name="web", log_dir=tmp_path
    ) as proc:
        assert proc.popen.poll() is None
    assert proc.popen.returncode is not None
    assert proc.log == tmp_path / "web.log" and proc.log.exists()  # kept: the log_dir's
    proc.stop()  # idempotent


def test_log_names_are_not_shared(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('hi')"]
    first = Process.launch(argv, name="same", log_dir=tmp_path)
    second = Process.launch(argv, name="same", log_dir=tmp_path)
    first.popen.wait(10)
    second.popen.wait(10)
    assert (first.log.name, second.log.name) == ("same.log", "same-2.log")
    assert first.output() == second.output() == "hi\n"


def test_a_child_that_exits_early_fails_with_its_output() -> None:
    argv = [sys.executable, "-c", "import sys; print('no config here'); sys.exit(3)"]
    proc = Process.launch(argv, name="early")
    with pytest.raises(ProcessStartError, match=r"(?s)code 3.*no config here"):
        proc.wait_ready(local_url(free_port()), timeout=10)
    proc.stop()
    assert not proc.log.exists()  # a temporary log goes with the process
