"""No module imports from a floor above its own: the package's layering, checked on every run.

The floors, lowest first (a module may import from its own floor and any floor below):

0. foundation: errors (every refusal, protocol ones included), the shared types, settings, the
   stage contract (``pipeline.stage``), signing keys, small value types and helpers.
1. protocols: the formats of what is mediated (A2A operations, readings and wire shapes; the
   LLM request, usage, catalogue and context).
2. stores: shared state behind one interface per concern, memory and Redis.
3. services: identity and directory, outbound transport, delegation tokens, policy, budgets,
   audit, containment and the kill switches: what the stages ask.
4. stages: one step of a pipeline each, A2A's, LLM's and the shared ones.
5. pipeline: the order of each protocol's stages.
6. runtime: the composition root, which only wires.
7. edges: HTTP routes, the CLI and the demo it launches.

Imports under ``if TYPE_CHECKING:`` are annotations only (no runtime dependency, no cycle) and
are not counted. ``docs/development.md`` has the same map, with where each concern lives.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BROKER = Path(__file__).resolve().parents[2] / "broker"

FLOORS: dict[int, tuple[str, ...]] = {
    0: (
        "broker",  # the package itself: its version
        "broker.errors", "broker.types", "broker.settings", "broker.settings_llm",
        "broker.settings_containment", "broker.config_errors", "broker.pipeline.stage",
        "broker.identity.keys", "broker.budgets.model", "broker.late_writes",
        "broker.identity.names", "broker.identity.credentials", "broker.background",
        "broker.delegation.errors", "broker.llm.errors", "broker.ids",
        "broker.mcp.errors", "broker.settings_mcp", "broker.settings_datacontrols",
        "broker.settings_observability", "broker.settings_approvals",
        # The metrics hooks every floor calls (they import only prometheus-client), and the
        # logging set-up.
        "broker.observability",
    ),
    1: ("broker.protocols", "broker.llm.context", "broker.llm", "broker.mcp"),
    2: ("broker.stores",),
    3: (
        "broker.outbound", "broker.delegation", "broker.identity", "broker.policy",
        "broker.budgets", "broker.audit", "broker.containment", "broker.datacontrols",
        "broker.approvals", "broker.alerts", "broker.mcp.directory",
    ),
    4: (
        "broker.stages", "broker.containment.stages", "broker.llm.stages", "broker.llm.audit",
        "broker.llm.metering", "broker.llm.forward", "broker.llm.datacontrols",
        "broker.mcp.stages", "broker.mcp.audit", "broker.mcp.forward", "broker.mcp.virtual",
        "broker.mcp.listen",
        "broker.mcp.approvals", "broker.mcp.datacontrols",
        "broker.approvals.stages", "broker.approvals.a2a",
    ),
    5: ("broker.pipeline",),
    6: ("broker.runtime",),
    7: (
        "broker.http", "broker.cli", "broker.__main__", "broker.settings_doc",
        "broker.settings_fields", "broker.demo", "broker.observability.scrape", "broker.console",
    ),
}  # fmt: skip
NAMES = dict(enumerate(
    ("foundation", "protocols", "stores", "services", "stages", "pipeline", "runtime", "edges")
))  # fmt: skip


def floor_of(module: str) -> int | None:
    """The floor of the longest prefix of ``module`` that has one."""
    best: tuple[int, int] | None = None
    for floor, prefixes in FLOORS.items():
        for prefix in prefixes:
            # "broker" (the package's own __init__) is a module, not a prefix: a module nobody
            # placed must fail the check, not land on the bottom floor.
            nested = prefix != "broker" and module.startswith(prefix + ".")
            matches = module == prefix or nested
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), floor)
    return None if best is None else best[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(BROKER.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def broker_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import of a broker module, lazy ones included."""
    found: list[tuple[int, str]] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            # ``from broker.x import y`` names module broker.x.y when that is a module.
            found += [(node.lineno, _module_or_parent(n)) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        pending.extend(ast.iter_child_nodes(node))
    return sorted((line, name) for line, name in found if name.split(".")[0] == "broker")


def _module_or_parent(dotted: str) -> str:
    path = BROKER.parent.joinpath(*dotted.split("."))
    if path.with_suffix(".py").exists() or (path / "__init__.py").exists():
        return dotted
    return dotted.rsplit(".", 1)[0]


MODULES = sorted(BROKER.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_every_module_imports_only_from_its_floor_or_below(path: Path) -> None:
    module = module_name(path)
    floor = floor_of(module)
    assert floor is not None, f"{module} has no floor: add it to FLOORS (and the docs' map)"
    upward = [
        f"line {line}: {name} ({NAMES[found]}) from {module} ({NAMES[floor]})"
        for line, name in broker_imports(ast.parse(path.read_text(encoding="utf-8")))
        if (found := floor_of(name)) is not None and found > floor
    ]
    assert upward == []


def test_the_check_finds_an_upward_import() -> None:
    """The check itself: an import from a higher floor is found, a type-only one is not."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from broker.runtime import BrokerRuntime\n"
        "if TYPE_CHECKING:\n"
        "    from broker.pipeline.a2a import A2aParts\n"
        "def later():\n"
        "    import broker.http.app\n"
    )
    found = broker_imports(ast.parse(source))
    assert found == [(2, "broker.runtime"), (6, "broker.http.app")]
    assert floor_of("broker.runtime") == 6 > floor_of("broker.stages.forward") == 4
    assert floor_of("broker.pipeline.stage") == 0 < floor_of("broker.pipeline.a2a") == 5
    assert floor_of("broker") == 0 and floor_of("broker.not_placed_anywhere") is None


def _runtime_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import outside ``if TYPE_CHECKING:``, any package."""
    found: list[tuple[int, str]] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        pending.extend(ast.iter_child_nodes(node))
    return found


def test_only_the_stores_import_the_redis_client_library() -> None:
    """Redis is one backend of the stores: everything else reaches it through ``stores/``
    (``stores.redis_client`` opens clients and names their failures)."""
    outside = [
        f"{module_name(path)} line {line}: {name}"
        for path in MODULES
        if module_name(path).split(".")[:2] != ["broker", "stores"]
        for line, name in _runtime_imports(ast.parse(path.read_text(encoding="utf-8")))
        if name.split(".")[0] == "redis"
    ]
    assert outside == []
