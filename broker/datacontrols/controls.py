"""Data controls as one object a pipeline stage calls: inspect a payload for a call, act on
what is found by policy, check where tagged work may flow.

Usage, per call (``Subject`` says direction, caller, target or model, skill)::

    controls.check_flow(carried_tags, agent=target)          # DataFlowDeniedError
    seen = controls.inspect_a2a(params, request_subject, placeholders)
    forward(seen.payload); tags = accumulate(carried_tags, seen.tags)
    answer = controls.inspect_a2a(result, response_subject, placeholders)
    relay(answer.payload)                                     # pseudonyms restored

Every result says what was found by type and count, and the action taken (``audit()``): never
a value. Refusals are ``DataBlockedError``, ``DataResponseBlockedError``, ``DataScanLimitError``
and ``DataControlsUnavailableError`` (docs/errors.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.datacontrols import payloads
from broker.datacontrols.detector import Detector, DetectorOptions
from broker.datacontrols.findings import Finding
from broker.datacontrols.policy import DataPolicy, Subject
from broker.datacontrols.redact import Placeholders, StreamRestorer, replace_findings
from broker.datacontrols.stream import StreamScanner
from broker.errors import (
    DataBlockedError,
    DataControlsUnavailableError,
    DataFlowDeniedError,
    DataResponseBlockedError,
    DataScanLimitError,
)
from broker.settings_datacontrols import Action, DataControlsSettings

Walk = Callable[[Any, Callable[[str], str]], Any]


class TextAnalyzer(Protocol):
    """An extra engine (Presidio) that finds values the built-in recognizers do not."""

    def analyze(self, text: str) -> list[Finding]: ...


@dataclass(slots=True)
class Inspection:
    """What the controls found in one payload (or stream) and did about it."""

    payload: Any = None
    found: dict[str, int] = field(default_factory=dict)  # type -> values found
    actions: dict[str, Action] = field(default_factory=dict)  # type -> action taken
    changed: bool = False

    @property
    def tags(self) -> tuple[str, ...]:
        """Types whose values went on to the target: what the work now carries."""
        return tuple(sorted(k for k, a in self.actions.items() if a == "tag"))

    def audit(self) -> dict[str, dict[str, int | str]]:
        """For the audit record and SIEM: per type its count and the action. No values."""
        return {k: {"count": n, "action": self.actions[k]} for k, n in sorted(self.found.items())}


class DataControls:
    """Built once at start-up from ``[datacontrols]``; holds no per-request state."""

    def __init__(
        self,
        settings: DataControlsSettings,
        detector: Detector | None = None,
        analyzer: TextAnalyzer | None = None,
    ) -> None:
        self.settings = settings
        self.detector = detector or Detector.builtin(
            DetectorOptions(
                phone_regions=settings.phone_regions,
                national_ids=settings.national_ids,
                ip_private=settings.ip_private,
            )
        )
        self.policy = DataPolicy(settings)
        self._analyzer = analyzer

    def check_flow(self, tags: Iterable[str], *, agent: str = "", model: str = "") -> None:
        """Raises ``DataFlowDeniedError`` if a flow rule keeps work with these tags from the
        target (an A2A ``agent`` or an LLM ``model``)."""
        denial = self.policy.forbidden_flow(tags, agent=agent, model=model)
        if denial is not None:
            target = agent or model
            raise DataFlowDeniedError(
                metadata={"tag": denial.tag, "target": target},
                detail=f"flow rule {denial.rule}: {denial.tag} may not reach {target}",
            )

    def inspect_text(
        self, text: str, subject: Subject, placeholders: Placeholders | None = None
    ) -> Inspection:
        return self._inspect(text, subject, placeholders, lambda value, fn: fn(value))

    def inspect_a2a(
        self, payload: Any, subject: Subject, placeholders: Placeholders | None = None
    ) -> Inspection:
        """An A2A request's params or message, a task, an artifact, a stream event's result."""
        return self._inspect(payload, subject, placeholders, payloads.map_a2a)

    def inspect_json(
        self, payload: Any, subject: Subject, placeholders: Placeholders | None = None
    ) -> Inspection:
        """Every string value at any depth (an embeddings input, an error's message)."""
        return self._inspect(payload, subject, placeholders, payloads.map_json)

    def inspect_chat_request(
        self, body: Any, subject: Subject, placeholders: Placeholders | None = None
    ) -> Inspection:
        return self._inspect(body, subject, placeholders, payloads.map_chat_request)

    def inspect_chat_response(
        self, body: Any, subject: Subject, placeholders: Placeholders | None = None
    ) -> Inspection:
        """A completion; the call's pseudonyms (``placeholders``) are restored in it."""
        return self._inspect(body, subject, placeholders, payloads.map_chat_response)

    def text_stream(self, subject: Subject, placeholders: Placeholders | None = None) -> TextStream:
        """One streamed text (an LLM choice's deltas, an A2A artifact's appended text)."""
        return TextStream(self, subject, placeholders)

    def inspect(
        self,
        payload: Any,
        subject: Subject,
        placeholders: Placeholders | None,
        walk: Walk,
        *,
        seen: Callable[[Inspection], None] | None = None,
    ) -> Inspection:
        """Any payload, its texts found by ``walk`` (``broker.datacontrols.payloads.map_*``).
        ``seen`` is given what was found before a blocked type refuses the payload, so a
        refusal can be counted too (the returned inspection is the same object)."""
        return self._inspect(payload, subject, placeholders, walk, seen)

    def _inspect(
        self,
        payload: Any,
        subject: Subject,
        placeholders: Placeholders | None,
        walk: Walk,
        seen: Callable[[Inspection], None] | None = None,
    ) -> Inspection:
        act = _Acting(self, subject, placeholders or Placeholders())
        new = walk(payload, act.text)
        if seen is not None:
            seen(act.result)
        act.raise_if_blocked()
        if subject.direction == "response" and placeholders is not None:
            new = walk(new, placeholders.restore)
        result = act.result
        result.payload, result.changed = new, new is not payload
        return result

    def findings(self, text: str) -> list[Finding]:
        """Built-in findings plus the analyzer's where they do not overlap them."""
        found = self.detector.scan(text)
        if self._analyzer is None:
            return found
        try:
            extra = self._analyzer.analyze(text)
        except Exception as exc:
            raise DataControlsUnavailableError(
                detail=f"analyzer failed: {type(exc).__name__}"
            ) from exc
        return _merge(found, extra)


def open_controls(settings: DataControlsSettings) -> DataControls | None:
    """The controls ``[datacontrols]`` asks for, built once at start-up; None when they are off.
    Raises ``PresidioUnavailableError`` (its message says what to install) when the Presidio
    engine is configured and cannot load."""
    if not settings.enabled:
        return None
    analyzer = None
    if settings.engine == "presidio":
        from broker.datacontrols.presidio import load_presidio  # noqa: PLC0415 - only if asked

        analyzer = load_presidio(settings.presidio)
    return DataControls(settings, analyzer=analyzer)


def _merge(found: list[Finding], extra: list[Finding]) -> list[Finding]:
    merged = list(found)
    for candidate in extra:
        if all(candidate.end <= f.start or candidate.start >= f.end for f in merged):
            merged.append(candidate)
    return sorted(merged)


class _Acting:
    """Applies actions to the texts of one payload and counts what it found."""

    def __init__(
        self, controls: DataControls, subject: Subject, placeholders: Placeholders
    ) -> None:
        self._controls = controls
        self._subject = subject
        self._placeholders = placeholders
        self._budget = controls.settings.max_scan_chars
        self._blocked: set[str] = set()
        self.result = Inspection()

    def text(self, text: str) -> str:
        self.spend(len(text))
        return self.act(text, self._controls.findings(text))

    def spend(self, chars: int) -> None:
        self._budget -= chars
        if self._budget < 0:
            raise DataScanLimitError(
                metadata={"max_scan_chars": str(self._controls.settings.max_scan_chars)}
            )

    def act(self, text: str, findings: list[Finding]) -> str:
        if not findings:
            return text
        policy, subject, result = self._controls.policy, self._subject, self.result
        for finding in findings:
            action = policy.action(subject, finding.kind)
            result.found[finding.kind] = result.found.get(finding.kind, 0) + 1
            result.actions[finding.kind] = action
            if action == "block":
                self._blocked.add(finding.kind)
        return replace_findings(text, findings, lambda f: self._replacement(text, f))

    def _replacement(self, text: str, finding: Finding) -> str | None:
        action = self.result.actions[finding.kind]
        if action not in ("redact", "pseudonymize"):
            return None
        reversible = action == "pseudonymize" and self._subject.direction == "request"
        value = text[finding.start : finding.end]
        return self._placeholders.placeholder(finding.kind, value, reversible=reversible)

    def raise_if_blocked(self) -> None:
        if not self._blocked:
            return
        kinds = ",".join(sorted(self._blocked))
        metadata = {"types": kinds, "direction": self._subject.direction}
        if self._subject.direction == "response":
            raise DataResponseBlockedError(metadata=metadata, detail=f"blocked types: {kinds}")
        raise DataBlockedError(metadata=metadata, detail=f"blocked types: {kinds}")


class TextStream:
    """Scans and acts on one streamed text chunk by chunk; restores the call's pseudonyms.
    ``feed`` returns what may be sent now (possibly ""), ``finish`` the rest. A blocked type
    raises before any of its characters are released. ``inspection`` holds the counts."""

    def __init__(
        self, controls: DataControls, subject: Subject, placeholders: Placeholders | None
    ) -> None:
        self._scanner = StreamScanner(controls.detector)
        self._acting = _Acting(controls, subject, placeholders or Placeholders())
        self._restorer = StreamRestorer(placeholders) if placeholders is not None else None
        self._analyzer = controls._analyzer

    @property
    def inspection(self) -> Inspection:
        return self._acting.result

    def feed(self, chunk: str) -> str:
        self._acting.spend(len(chunk))
        return self._out(*self._scanner.feed(chunk), final=False)

    def finish(self) -> str:
        return self._out(*self._scanner.finish(), final=True)

    def _out(self, text: str, findings: list[Finding], *, final: bool) -> str:
        if self._analyzer is not None and text:
            findings = _merge(findings, self._analyzer.analyze(text))
        acted = self._acting.act(text, findings)
        self._acting.raise_if_blocked()
        if self._restorer is None:
            return acted
        restored = self._restorer.feed(acted)
        return restored + self._restorer.finish() if final else restored
