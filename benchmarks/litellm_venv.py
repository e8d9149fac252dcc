"""LiteLLM's proxy in a virtualenv of its own, made on first use outside the repository.

    ~/.cache/a2a-broker-bench/litellm-<version>/   (or $A2A_BENCH_CACHE/litellm-<version>/)

Its dependencies never touch the project's venv. A failed install leaves no marker, so the next
run tries again; ``LiteLLMUnavailableError`` says why it could not be had this time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LITELLM_VERSION = "1.108.7"
INSTALL_TIMEOUT_S = 900.0
# Everything LiteLLM would otherwise fetch or report over the internet, switched off: the model
# cost map (GitHub), telemetry, the feedback box, and the proxy's schema and key checks.
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "TELEMETRY": "False",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
    "DISABLE_SCHEMA_UPDATE": "true",
    "LITELLM_LOG": "ERROR",
    "HF_HUB_OFFLINE": "1",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


class LiteLLMUnavailableError(RuntimeError):
    """LiteLLM's proxy could not be installed; the message says why."""


def cache_dir() -> Path:
    root = os.environ.get("A2A_BENCH_CACHE") or Path.home() / ".cache" / "a2a-broker-bench"
    return Path(root) / f"litellm-{LITELLM_VERSION}"


def litellm_command(venv: Path | None = None) -> Path:
    """The ``litellm`` proxy command of an installed venv (installing it first if need be)."""
    venv = venv or cache_dir()
    marker = venv / ".installed"
    if not marker.exists():
        _install(venv)
        marker.write_text(LITELLM_VERSION + "\n")
    return venv / "bin" / "litellm"


def _install(venv: Path) -> None:
    print(f"  installing litellm[proxy]=={LITELLM_VERSION} into {venv} (first use)", flush=True)
    log = venv.parent / f"litellm-{LITELLM_VERSION}-install.log"
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
         f"litellm[proxy]=={LITELLM_VERSION}"],
    ]  # fmt: skip
    with log.open("w") as out:
        for argv in steps:
            try:
                done = subprocess.run(
                    argv, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S,
                    check=False,
                )  # fmt: skip
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise LiteLLMUnavailableError(f"{' '.join(argv[-2:])}: {exc}") from exc
            if done.returncode != 0:
                raise LiteLLMUnavailableError(
                    f"`{' '.join(argv[-2:])}` exited {done.returncode}: {_why(log)} (log {log})"
                )
    if not (venv / "bin" / "litellm").exists():
        raise LiteLLMUnavailableError(f"the install left no {venv}/bin/litellm (log {log})")


def _why(log: Path) -> str:
    """pip's last ERROR line (it names what could not be had), else its last line."""
    lines = log.read_text(errors="replace").splitlines() or ["(no output)"]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines)[-1][:400]


def config_yaml(model: str, api_base: str, master_key: str) -> str:
    """A proxy config: ``model`` served by the OpenAI-compatible provider at ``api_base``;
    callers present ``master_key`` (checked in memory: there is no database)."""
    return f"""\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {api_base}
      api_key: sk-bench-dummy
litellm_settings:
  telemetry: false
  drop_params: true
  set_verbose: false
  json_logs: false
general_settings:
  master_key: {master_key}
  disable_spend_logs: true
  disable_error_logs: true
"""
