"""The optional Presidio engine, for names and places the built-in patterns cannot find.

Imported only when ``[datacontrols] engine = "presidio"``; needs the ``presidio`` extra
(``pip install 'a2a-broker[presidio]'``) and a spaCy language model installed by the operator.
Presidio reads text with a language model, so it is far slower than the built-in recognizers
(milliseconds per KB) and its answers depend on context; in streams it reads each released
segment on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from broker.datacontrols.findings import Finding
from broker.settings_datacontrols import PresidioSettings, is_type_name


class PresidioUnavailableError(Exception):
    """The engine is configured but cannot be loaded; the message says what to install."""


class _Result(Protocol):
    entity_type: str
    start: int
    end: int
    score: float


class PresidioAnalyzer:
    """Adapts a ``presidio_analyzer.AnalyzerEngine`` to the detector: entities mapped to our
    types (``PERSON`` -> ``pii:person``), results under ``min_score`` dropped."""

    def __init__(self, engine: Any, settings: PresidioSettings) -> None:
        bad = [t for t in settings.entities.values() if not is_type_name(t)]
        if bad:
            raise PresidioUnavailableError(
                f"[datacontrols.presidio] entities: {bad[0]!r} is not a type name"
            )
        self._engine = engine
        self._types: Mapping[str, str] = dict(settings.entities)
        self._language = settings.language
        self._min_score = settings.min_score

    def analyze(self, text: str) -> list[Finding]:
        results: list[_Result] = self._engine.analyze(
            text=text, language=self._language, entities=list(self._types)
        )
        return sorted(
            Finding(r.start, r.end, self._types[r.entity_type])
            for r in results
            if r.entity_type in self._types and r.score >= self._min_score and r.start < r.end
        )


def load_presidio(settings: PresidioSettings) -> PresidioAnalyzer:
    """Presidio's analyzer engine, loaded now. Raises ``PresidioUnavailableError``."""
    try:
        from presidio_analyzer import AnalyzerEngine  # type: ignore[import-not-found]  # noqa: PLC0415
    except ImportError as exc:
        raise PresidioUnavailableError(
            '[datacontrols] engine = "presidio" needs the presidio extra: '
            "pip install 'a2a-broker[presidio]' and a spaCy model"
            " (python -m spacy download en_core_web_lg)"
        ) from exc
    try:
        engine = AnalyzerEngine(supported_languages=[settings.language])
    except Exception as exc:  # model missing or broken: say so at start-up, not per request
        raise PresidioUnavailableError(f"Presidio's analyzer could not start: {exc}") from exc
    return PresidioAnalyzer(engine, settings)
