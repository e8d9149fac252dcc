"""Granian for the server comparison (scenario s), installed on first use outside the repository.

    ~/.cache/a2a-broker-bench/granian-<version>/   (or $A2A_BENCH_CACHE/granian-<version>/)

Granian runs the broker's own app, so it must import the broker's dependencies: it is installed
with ``pip install --target`` (granian and its few dependencies only) and put on ``PYTHONPATH``
of the broker process, which runs the project's interpreter. The project's venv is not touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GRANIAN_VERSION = "2.8.7"
INSTALL_TIMEOUT_S = 600.0


class GranianUnavailableError(RuntimeError):
    """Granian could not be installed; the message says why."""


def target_dir() -> Path:
    root = os.environ.get("A2A_BENCH_CACHE") or Path.home() / ".cache" / "a2a-broker-bench"
    return Path(root) / f"granian-{GRANIAN_VERSION}"


def granian_path() -> Path:
    """A folder to put on ``PYTHONPATH`` that holds granian (installing it first if need be)."""
    target = target_dir()
    marker = target / ".installed"
    if marker.exists():
        return target
    print(f"  installing granian=={GRANIAN_VERSION} into {target} (first use)", flush=True)
    target.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "install", "-q", "--upgrade", "--target", str(target),
            f"granian=={GRANIAN_VERSION}"]  # fmt: skip
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GranianUnavailableError(f"pip install granian: {exc}") from exc
    if done.returncode != 0:
        raise GranianUnavailableError(f"pip install granian exited {done.returncode}: "
                                      f"{(done.stderr or done.stdout).strip()[-400:]}")  # fmt: skip
    marker.write_text(GRANIAN_VERSION + "\n")
    return target
