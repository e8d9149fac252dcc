"""Policy files: parsed and validated here, before casbin ever sees a rule.

A policy file is CSV, one rule a line (blank lines and lines starting with ``#`` are skipped)::

    p,  <agent | role:x>,  <agent | group:x | *>,  <action>,  <allow | deny | approve>
    g,  <agent | role:x>,  role:y          # the member holds role:y (roles nest)
    g2, <agent | group:x>, group:y         # the target belongs to group:y (groups nest)

An action is ``originate``, ``delegate``, ``reenter`` (named exactly; wildcards never grant them),
``*``, ``llm:chat`` / ``llm:embeddings`` / ``llm:*`` (object ``model:<name>``), or
``<Operation>:<skill>`` with an A2A 1.0 operation name, where a ``*`` may only end the
action (``SendMessage:*``), since casbin's ``keyMatch`` ignores whatever follows a ``*``.

Every role a rule uses must have members (be the parent of some ``g`` line), every group some
members (``g2``); hierarchies must be acyclic and no deeper than casbin follows. A file that
breaks any of this raises ``PolicyError`` naming the file and line, and is never applied.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from broker.protocols.a2a.operations import OPERATIONS

RuleKind = Literal["p", "g", "g2"]

ORIGINATE = "originate"
DELEGATE = "delegate"
REENTER = "reenter"
SPECIAL_ACTIONS = frozenset({ORIGINATE, DELEGATE, REENTER})
ANY = "*"
ROLE_PREFIX = "role:"
GROUP_PREFIX = "group:"
ALLOW = "allow"
DENY = "deny"
# Allowed, but only once a human approved the exact call (docs/approvals.md). Precedence:
# deny beats approve, approve beats allow.
APPROVE = "approve"
EFFECTS = (ALLOW, DENY, APPROVE)

# casbin's default role manager follows at most 9 links (its hierarchy level of 10 includes
# the start); a deeper membership would silently not count, so it is refused instead.
MAX_MEMBERSHIP_LINKS = 9

# LLM calls through the broker (docs/llm.md): the object is model:<name>, the action one of these.
MODEL_PREFIX = "model:"
LLM_ACTIONS = frozenset({"llm:chat", "llm:embeddings", "llm:*"})
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,127}$")
# MCP servers through the broker (docs/mcp.md): the object is mcp:<server> (the registry's
# server-name syntax), the action mcp:<method> or mcp:<method>:<tool, prompt or resource>.
MCP_PREFIX = "mcp:"
_MCP_SERVER_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]|_(?=[a-z0-9-])){0,62}$")

_ARITY: dict[str, int] = {"p": 4, "g": 2, "g2": 2}
# The registry's agent-name syntax (broker.identity.names.AGENT_NAME_RE); roles/groups use it too.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class PolicyError(Exception):
    """A policy (or model) file that cannot be applied; ``line`` is 1-based, 0 = whole file."""

    def __init__(self, file: str, line: int, message: str) -> None:
        self.file = file
        self.line = line
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a policy file: its type, its fields (without the type), where it was."""

    kind: RuleKind
    fields: tuple[str, ...]
    line: int
    text: str


@dataclass(frozen=True, slots=True)
class ParsedPolicy:
    """A validated policy file: every rule in file order."""

    source: str
    rules: tuple[Rule, ...]

    def of_kind(self, kind: RuleKind) -> list[Rule]:
        return [rule for rule in self.rules if rule.kind == kind]


def parse_policy(text: str, source: str) -> ParsedPolicy:
    """Parse and validate a policy file's text; raises ``PolicyError`` on the first problem."""
    rules: list[Rule] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped and not stripped.startswith("#"):
            rules.append(_parse_line(stripped, number, source))
    _check_references(rules, source)
    _check_hierarchy([r for r in rules if r.kind == "g"], source)
    _check_hierarchy([r for r in rules if r.kind == "g2"], source)
    return ParsedPolicy(source=source, rules=tuple(rules))


def _parse_line(line: str, number: int, source: str) -> Rule:
    try:
        fields = [f.strip() for f in next(csv.reader([line], skipinitialspace=True, strict=True))]
    except csv.Error as exc:
        raise PolicyError(source, number, f"not valid CSV: {exc}") from None
    kind, values = fields[0], fields[1:]
    if kind not in _ARITY:
        raise PolicyError(source, number, f"unknown rule type {kind!r} (expected p, g or g2)")
    if len(values) != _ARITY[kind]:
        raise PolicyError(
            source, number, f"{kind} takes {_ARITY[kind]} fields after the type, not {len(values)}"
        )
    for value in values:
        if not value or any(c.isspace() for c in value):
            raise PolicyError(source, number, f"empty field or whitespace inside {value!r}")
    problem = _check_p(values) if kind == "p" else _check_membership(kind, values)
    if problem:
        raise PolicyError(source, number, problem)
    return Rule(kind=cast(RuleKind, kind), fields=tuple(values), line=number, text=line)


def _check_p(values: Sequence[str]) -> str | None:
    sub, obj, act, eft = values
    if not (_is_agent(sub) or _is_label(sub, ROLE_PREFIX)):
        return f"subject {sub!r} must be an agent name or role:<name>"
    if not (obj == ANY or _is_agent(obj) or _is_label(obj, GROUP_PREFIX) or _is_model(obj)
            or _is_mcp_server(obj)):
        return (f"object {obj!r} must be an agent name, group:<name>, model:<name>,"
                " mcp:<server> or *")
    if eft not in EFFECTS:
        return f"effect {eft!r} must be allow or deny (or approve)"
    if eft == APPROVE and act in SPECIAL_ACTIONS:
        return f"approve applies to calls (operations, LLM calls), not to {act!r}"
    if act == ORIGINATE and obj != ANY:
        return "an originate rule's object must be *"
    return _check_action(act)


def _check_action(act: str) -> str | None:
    if act in SPECIAL_ACTIONS or act == ANY or act in LLM_ACTIONS:
        return None
    if ANY in act[:-1]:
        return f"'*' may only end an action ({act!r}): keyMatch ignores what follows it"
    if act.startswith(MCP_PREFIX):
        return None if len(act) > len(MCP_PREFIX) else f"action {act!r} names no MCP method"
    operation, colon, _ = act.partition(":")
    if not colon:
        return (
            f"action {act!r} must be originate, delegate, reenter, * or <Operation>:<skill>"
            f" (for every skill of an operation write {operation.rstrip('*')}:*)"
        )
    if operation not in OPERATIONS:
        return f"unknown A2A operation {operation!r} in action {act!r}"
    return None


def _check_membership(kind: str, values: Sequence[str]) -> str | None:
    child, parent = values
    prefix = ROLE_PREFIX if kind == "g" else GROUP_PREFIX
    if not _is_label(parent, prefix):
        return f"{kind} parent {parent!r} must be {prefix}<name>"
    target = kind == "g2" and (_is_model(child) or _is_mcp_server(child))
    if not (_is_agent(child) or _is_label(child, prefix) or target):
        return f"{kind} member {child!r} must be an agent name or {prefix}<name>"
    if child == parent:
        return f"{parent} cannot contain itself"
    return None


def _is_model(name: str) -> bool:
    return name.startswith(MODEL_PREFIX) and bool(_MODEL_RE.match(name[len(MODEL_PREFIX) :]))


def _is_mcp_server(name: str) -> bool:
    return name.startswith(MCP_PREFIX) and bool(_MCP_SERVER_RE.match(name[len(MCP_PREFIX) :]))


def _is_agent(name: str) -> bool:
    return bool(_NAME_RE.match(name))


def _is_label(name: str, prefix: str) -> bool:
    return name.startswith(prefix) and bool(_NAME_RE.match(name[len(prefix) :]))


def _check_references(rules: Sequence[Rule], source: str) -> None:
    """Every role/group a rule uses must have members somewhere in the file."""
    roles = {r.fields[1] for r in rules if r.kind == "g"}
    groups = {r.fields[1] for r in rules if r.kind == "g2"}
    for rule in rules:
        for name in _used_labels(rule):
            defined = roles if name.startswith(ROLE_PREFIX) else groups
            if name not in defined:
                line = "g" if name.startswith(ROLE_PREFIX) else "g2"
                raise PolicyError(
                    source, rule.line, f"unknown {name}: no {line} line puts anyone in it"
                )


def _used_labels(rule: Rule) -> Iterable[str]:
    """Roles and groups that ``rule`` uses without defining them."""
    candidates = rule.fields[:2] if rule.kind == "p" else rule.fields[:1]
    return (n for n in candidates if n.startswith((ROLE_PREFIX, GROUP_PREFIX)))


def _check_hierarchy(edges: Sequence[Rule], source: str) -> None:
    """Refuse cycles, and memberships longer than casbin follows, naming the offending line."""
    parents: dict[str, list[Rule]] = {}
    for edge in edges:
        parents.setdefault(edge.fields[0], []).append(edge)
    height: dict[str, int] = {}  # links from a name up to its most distant ancestor
    too_deep = f"membership nested deeper than {MAX_MEMBERSHIP_LINKS} links"

    def climb(name: str, path: tuple[str, ...]) -> int:
        if name in height:
            return height[name]
        best = 0
        for edge in parents.get(name, ()):
            parent = edge.fields[1]
            if parent in path:
                raise PolicyError(source, edge.line, f"membership cycle through {parent}")
            # The path check bounds the recursion; the height check covers memoised branches.
            if len(path) > MAX_MEMBERSHIP_LINKS:
                raise PolicyError(source, edge.line, too_deep)
            best = max(best, 1 + climb(parent, (*path, parent)))
            if best > MAX_MEMBERSHIP_LINKS:
                raise PolicyError(source, edge.line, too_deep)
        height[name] = best
        return best

    for name in parents:
        climb(name, (name,))
