"""The pinned dependency sets agree with pyproject.toml, so a fresh install gets what CI saw."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def _pins(name: str) -> dict[str, str]:
    text = (ROOT / "requirements" / name).read_text(encoding="utf-8")
    return {canonicalize_name(m[1]): m[2] for m in _PIN.finditer(text)}


def _declared(extra: str | None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = project["dependencies"]
    if extra is not None:
        declared = [*declared, *project["optional-dependencies"][extra]]
    return [Requirement(text) for text in declared]


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    for lock, extra in (("runtime.lock", None), ("test.lock", "test")):
        pins = _pins(lock)
        for req in _declared(extra):
            version = pins.get(canonicalize_name(req.name))
            assert version is not None, f"{req.name} is not in requirements/{lock}"
            assert req.specifier.contains(version, prereleases=True), (
                f"requirements/{lock} pins {req.name}=={version}, outside {req.specifier}: "
                "run requirements/refresh.sh"
            )


def test_every_pin_carries_a_hash() -> None:
    for lock in ("runtime.lock", "test.lock"):
        text = (ROOT / "requirements" / lock).read_text(encoding="utf-8")
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[-1])
        pinned = [b for b in blocks if "==" in b.split("\n", 1)[0]]
        assert pinned
        assert all("--hash=sha256:" in block for block in pinned), lock


def test_the_runtime_set_is_the_test_set_minus_test_tools() -> None:
    runtime, test = _pins("runtime.lock"), _pins("test.lock")
    assert {name: test.get(name) for name in runtime} == runtime
