"""Canary values for data-controls tests: fresh, valid values of each detected type, and a check
that none of them appears in logs, audit files, SIEM output or metrics.

A test plants ``Canaries()`` values in the traffic it sends, then calls ``assert_absent`` on every
place that must not hold them (files, directories, strings, bytes). Each canary is made anew per
run from random digits and passes its type's validator, so it is found by the detector and cannot
be confused with anything already on disk. ``forms`` also catches the usual re-encodings (digits
only, base64, JSON-escaped).
"""

from __future__ import annotations

import base64
import json
import random
import string
from pathlib import Path

from stdnum import iban as stdnum_iban
from stdnum import luhn


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(count))


class Canaries:
    """One value per type, e.g. ``canaries.values["pii:card"]``."""

    def __init__(self, seed: int | None = None) -> None:
        rng = random.Random(seed)  # noqa: S311 - test values, not secrets
        tag = "".join(rng.choice(string.ascii_lowercase) for _ in range(10))
        card = "4" + _digits(rng, 14)
        card += luhn.calc_check_digit(card)
        iban = _valid_iban("37040044" + _digits(rng, 10))
        alnum = string.ascii_letters + string.digits
        upper = string.ascii_uppercase + string.digits
        self.values: dict[str, str] = {
            "pii:email": f"canary.{tag}@example.org",
            "pii:card": card,
            "pii:iban": iban,
            "pii:phone": "+1 415 555 " + _digits(rng, 4),
            "secret:aws_key": "AKIA" + "".join(rng.choice(upper) for _ in range(16)),
            "secret:github_token": "ghp_" + "".join(rng.choice(alnum) for _ in range(36)),
        }

    def text(self) -> str:
        """A message holding every canary once."""
        return "Please process: " + "; ".join(f"{k} {v}" for k, v in self.values.items()) + "."

    def forms(self) -> list[str]:
        """Every canary as written and in the encodings a leak might take."""
        found: list[str] = []
        for value in self.values.values():
            found += [value, json.dumps(value)[1:-1], base64.b64encode(value.encode()).decode()]
            digits = "".join(c for c in value if c.isdigit())
            if len(digits) >= 12:
                found.append(digits)
        return found

    def assert_absent(self, *places: str | bytes | Path) -> None:
        """Raises AssertionError naming the place and the type if any canary appears."""
        for place in places:
            for where, text in _texts(place):
                for form in self.forms():
                    assert form not in text, f"a canary ({self._kind_of(form)}) leaked into {where}"

    def _kind_of(self, form: str) -> str:
        for kind, value in self.values.items():
            if form in (value, json.dumps(value)[1:-1], base64.b64encode(value.encode()).decode()):
                return kind
            if form == "".join(c for c in value if c.isdigit()):
                return kind
        return "?"


def _valid_iban(bban: str) -> str:
    for check in range(100):
        candidate = f"DE{check:02d}{bban}"
        if stdnum_iban.is_valid(candidate):
            return candidate
    raise AssertionError("no IBAN check digits found")  # cannot happen: one of 100 is right


def _texts(place: str | bytes | Path) -> list[tuple[str, str]]:
    if isinstance(place, bytes):
        return [("bytes", place.decode("utf-8", "replace"))]
    if isinstance(place, str):
        return [("text", place)]
    files = [place] if place.is_file() else sorted(p for p in place.rglob("*") if p.is_file())
    return [(str(p), p.read_text(encoding="utf-8", errors="replace")) for p in files]
