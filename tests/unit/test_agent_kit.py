"""The agent kit (agent_kit/, module a2a_broker_agent) stands without the broker's server."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import a2a_broker_agent

from broker.delegation import agent as broker_agent

KIT = Path(__file__).resolve().parents[2] / "agent_kit"
# The broker's server dependencies (and the broker itself): none may be needed by the kit.
SERVER_ONLY = ("broker", "litestar", "redis", "hiredis", "casbin", "aiohttp", "msgspec",
               "uvicorn", "uvloop", "granian", "rich")
# The import name each declared distribution provides.
PROVIDES = {"a2a-sdk": "a2a", "pyjwt": "jwt", "httpx": "httpx"}


def test_the_kit_works_with_the_brokers_server_packages_impossible_to_import() -> None:
    code = f"""
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVER_ONLY!r}:
            raise ImportError("not installed for an agent: " + name)
sys.meta_path.insert(0, Refuse())
from a2a_broker_agent import DELEGATION_HEADER, DelegationInterceptor, capture_delegation
async def app(scope, receive, send): pass
capture_delegation(app)
DelegationInterceptor()
print(DELEGATION_HEADER, sorted(m for m in sys.modules if m.split(".")[0] in {SERVER_ONLY!r}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60,
        cwd=KIT.parent.parent,  # not the repository: nothing importable from the working folder
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "A2A-Delegation []"


def _declared() -> set[str]:
    project = tomllib.loads((KIT / "pyproject.toml").read_text())["project"]
    names = {dep.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
             for dep in project["dependencies"]}
    return {PROVIDES[name] for name in names}


def test_every_import_of_the_kit_is_the_standard_library_or_a_declared_dependency() -> None:
    allowed = _declared() | {"a2a_broker_agent"}
    foreign = []
    for path in sorted((KIT / "a2a_broker_agent").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in allowed and top not in sys.stdlib_module_names:
                    foreign.append(f"{path.name}: {name}")

    assert foreign == []
    assert _declared() == {"a2a", "jwt", "httpx"}


def test_the_broker_re_exports_the_kit_unchanged() -> None:
    for name in a2a_broker_agent.__all__:
        assert getattr(broker_agent, name) is getattr(a2a_broker_agent, name), name
