"""Redaction with type-preserving placeholders, and reversible pseudonyms.

``<EMAIL_1>``, ``<CARD_2>``: the label names the type, the number the distinct value within one
message (or one LLM call), so the same value gets the same placeholder wherever it appears and a
model can still tell two people's addresses apart. Pseudonyms are the same placeholders with the
originals kept in memory for the call, to restore them in the answer; they are never written
anywhere (not to the audit, the log or a store).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from broker.datacontrols.findings import Finding, placeholder_label

PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]{0,40})_([1-9][0-9]{0,8})>")
_PARTIAL = re.compile(r"<[A-Z0-9_]{0,52}\Z")


class Placeholders:
    """Numbers values per type within one message or call, so the same value gets the same
    placeholder. Only values given with ``reversible=True`` (pseudonyms) can be restored; the
    numbering and the originals live in this object, in memory, and go with it."""

    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = {}
        self._originals: dict[str, str] = {}

    def placeholder(self, kind: str, value: str, *, reversible: bool = False) -> str:
        key = (kind, value)
        found = self._by_value.get(key)
        if found is None:
            label = placeholder_label(kind)
            self._counts[label] = number = self._counts.get(label, 0) + 1
            found = self._by_value[key] = f"<{label}_{number}>"
        if reversible:
            self._originals[found] = value
        return found

    @property
    def reversible(self) -> bool:
        return bool(self._originals)

    def restore(self, text: str) -> str:
        """``text`` with every placeholder this object made put back to its value."""
        if not self._originals or "<" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self._originals.get(m.group(), m.group()), text)


def replace_findings(
    text: str, findings: list[Finding], replace: Callable[[Finding], str | None]
) -> str:
    """``text`` with each finding for which ``replace`` gives a string replaced by it."""
    pieces: list[str] = []
    last = 0
    for finding in findings:
        new = replace(finding)
        if new is None:
            continue
        pieces.append(text[last : finding.start])
        pieces.append(new)
        last = finding.end
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


class StreamRestorer:
    """Puts pseudonyms back into a streamed answer, whatever the chunking: a chunk that ends in
    what may be the start of a placeholder (``<EMA``) is held until the next one."""

    def __init__(self, placeholders: Placeholders) -> None:
        self._placeholders = placeholders
        self._held = ""

    def feed(self, chunk: str) -> str:
        text = self._held + chunk
        partial = _PARTIAL.search(text, max(0, len(text) - 54))
        cut = partial.start() if partial else len(text)
        self._held = text[cut:]
        return self._placeholders.restore(text[:cut])

    def finish(self) -> str:
        text, self._held = self._held, ""
        return self._placeholders.restore(text)
