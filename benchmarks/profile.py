"""Where the broker's CPU goes: py-spy samples the broker while wrk holds it at c=16.

py-spy is optional (``pip install py-spy``); without it the run says so and goes on. Its raw
(collapsed-stack) output is folded into the frames with the most *own* time, i.e. samples where
that frame was the innermost one running.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from benchmarks.loadgen import preflight, run_wrk, write_script
from benchmarks.measure import Workload
from benchmarks.targets import Target

TOP = 10
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def profile(
    target: Target, workload: Workload, seconds: float, work_dir: Path, wrk_cores: str | None
) -> dict[str, Any]:
    spy = py_spy()
    if spy is None:
        print("  py-spy not installed (pip install py-spy): no profile", flush=True)
        return {"error": "py-spy not installed"}
    preflight(target.url, workload.body, target.headers, workload.expect)
    script = write_script(work_dir / "profile.lua", workload.body, target.headers)
    load = threading.Thread(
        target=run_wrk, args=(target.url, script, 16, seconds + 3, wrk_cores), daemon=True
    )
    load.start()
    out = work_dir / "profile.txt"
    argv = [spy, "record", "--pid", str(target.process.pid), "--duration", f"{seconds:g}",
            "--rate", "250", "--format", "raw", "--full-filenames", "--output", str(out),
            "--nonblocking"]  # fmt: skip
    threading.Event().wait(1.0)  # sample steady state, not the ramp-up
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    load.join()
    if done.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed: {done.stderr.strip()[-500:]}"}
    return fold(out.read_text())


_BROKER = re.compile(r"(^|[/(])broker/")
_OUTER = re.compile(r"broker/(__main__|cli)\.py")  # start-up frames under every sample
_PACKAGES = ("broker", "litestar", "uvicorn", "aiohttp", "redis", "msgspec", "yarl", "multidict")


def fold(raw: str) -> dict[str, Any]:
    """Top frames by own samples, own samples per package, broker functions by inclusive time."""
    own: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = in_broker = 0
    for line in raw.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        count, frames = int(match["count"]), match["stack"].split(";")
        total += count
        own[_short(frames[-1])] += count
        packages[_package(frames[-1])] += count
        broker_frames = {_short(f) for f in frames if _BROKER.search(f) and not _OUTER.search(f)}
        in_broker += count if broker_frames else 0
        for frame in broker_frames:
            inclusive[frame] += count

    def share(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [{"frame": f, "samples": n, "share": n / total} for f, n in counter.most_common(TOP)]

    return {
        "samples": total,
        "in_broker_share": in_broker / total if total else 0,
        "top": share(own),
        "packages": share(packages),
        "broker_inclusive": share(inclusive),
    }


def _package(frame: str) -> str:
    match = _FRAME.match(frame)
    path = match["file"] if match else frame
    if _BROKER.search(path) and "site-packages" not in path:
        return "broker"
    for name in _PACKAGES:
        if f"site-packages/{name}/" in path:
            return name
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    return "stdlib (asyncio etc.)" if "lib/python3" in path else "other"


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "broker-src/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"
