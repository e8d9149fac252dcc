"""Data policy: which action applies to a found type, and which tagged work may go where.

Rules are read in order; the first rule that matches the call and names the type (exactly, by
family or by ``*``) decides it, with its most specific pattern; a type no rule names gets
``default_action``. Flow rules are checked against the tags the work carries, which only grow
along a chain (``broker.datacontrols.tags``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from broker.datacontrols.findings import pattern_specificity, type_matches
from broker.settings_datacontrols import Action, DataControlsSettings, DataRule, FlowRule

_CACHE_LIMIT = 4096
# Which action wins when one message holds several types: the strictest.
SEVERITY: dict[Action, int] = {"allow": 0, "tag": 1, "redact": 2, "pseudonymize": 3, "block": 4}


@dataclass(frozen=True, slots=True)
class Subject:
    """The coordinates of one call that rules match: for A2A ``agent`` is the target and
    ``model`` empty; for an LLM call ``model`` is the model and ``agent`` empty."""

    direction: Literal["request", "response"]
    caller: str
    agent: str = ""
    model: str = ""
    skill: str = ""


class _Globs:
    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = tuple(patterns)
        self.any = not patterns
        self._regex = (
            re.compile("|".join(fnmatch.translate(p) for p in patterns)) if patterns else None
        )

    def match(self, name: str) -> bool:
        return self._regex is not None and bool(name) and self._regex.match(name) is not None


@dataclass(frozen=True, slots=True)
class _Rule:
    direction: str
    callers: _Globs
    agents: _Globs
    models: _Globs
    skills: _Globs
    actions: tuple[tuple[str, Action], ...]  # most specific pattern first

    def applies(self, subject: Subject) -> bool:
        if self.direction not in ("both", subject.direction):
            return False
        if not (self.callers.any or self.callers.match(subject.caller)):
            return False
        if not (self.skills.any or self.skills.match(subject.skill)):
            return False
        if self.agents.any and self.models.any:
            return True
        return self.agents.match(subject.agent) or self.models.match(subject.model)

    def action(self, kind: str) -> Action | None:
        for pattern, action in self.actions:
            if type_matches(pattern, kind):
                return action
        return None


def _compile(rule: DataRule) -> _Rule:
    ordered = sorted(rule.actions.items(), key=lambda item: -pattern_specificity(item[0]))
    return _Rule(
        rule.direction,
        _Globs(rule.callers),
        _Globs(rule.agents),
        _Globs(rule.models),
        _Globs(rule.skills),
        tuple(ordered),
    )


@dataclass(frozen=True, slots=True)
class FlowDenial:
    """Tagged work may not go to this target: ``tag`` is the carried tag that a flow rule names."""

    tag: str
    rule: int  # index in [[datacontrols.flows]]


class DataPolicy:
    """Built once from the settings; answers per call. Safe to share."""

    def __init__(self, settings: DataControlsSettings) -> None:
        self._rules = tuple(_compile(r) for r in settings.rules)
        self._flows = tuple(
            (f, _Globs(f.agents) if f.agents else None, _Globs(f.models) if f.models else None)
            for f in settings.flows
        )
        self._default = settings.default_action
        self._cache: dict[tuple[Subject, str], Action] = {}

    def action(self, subject: Subject, kind: str) -> Action:
        key = (subject, kind)
        found = self._cache.get(key)
        if found is None:
            found = self._decide(subject, kind)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = found
        return found

    def _decide(self, subject: Subject, kind: str) -> Action:
        for rule in self._rules:
            if rule.applies(subject):
                action = rule.action(kind)
                if action is not None:
                    return action
        return self._default

    def forbidden_flow(
        self, tags: Iterable[str], *, agent: str = "", model: str = ""
    ) -> FlowDenial | None:
        """The first carried tag a flow rule forbids from reaching ``agent`` or ``model``."""
        for index, (flow, agents, models) in enumerate(self._flows):
            if not ((agents and agents.match(agent)) or (models and models.match(model))):
                continue
            for tag in sorted(tags):
                if any(type_matches(p, tag) for p in flow.tags):
                    return FlowDenial(tag, index)
        return None


def strictest(actions: Iterable[Action]) -> Action:
    return max(actions, key=SEVERITY.__getitem__, default="allow")


__all__ = ["Action", "DataPolicy", "FlowDenial", "FlowRule", "Subject", "strictest"]
