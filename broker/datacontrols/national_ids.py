"""National identity numbers, each checked by python-stdnum (check digits, dates, ranges).

Only written forms distinctive enough to be found in free text are read: the US SSN with its
dashes, the Brazilian CPF with its dots, and so on. Numbers that are a bare run of digits with a
weak check (Dutch BSN, German tax id, Polish PESEL) are available but off by default, since one
random run of digits in ten passes their check.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType

from stdnum.br import cpf
from stdnum.de import idnr
from stdnum.dk import cpr
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.in_ import aadhaar
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.pl import pesel
from stdnum.se import personnummer
from stdnum.us import ssn

from broker.datacontrols.findings import PII_NATIONAL_ID
from broker.datacontrols.recognizers import Accept, Recognizer, Span, char_class, clear_edges

# name -> (stdnum module, candidate pattern, longest candidate, first characters of a candidate,
#          characters before its first run of digits, lengths of that run)
_Entry = tuple[ModuleType, str, int, str, tuple[int, ...], frozenset[int] | None]
# What may follow the first run of digits, where the format says.
_FOLLOWS: dict[str, frozenset[str]] = {
    "us.ssn": frozenset("-"),
    "br.cpf": frozenset("."),
    "se.personnummer": frozenset("-+"),
    "dk.cpr": frozenset("-"),
    "in.aadhaar": frozenset(" "),
}
_TABLE: dict[str, _Entry] = {
    "us.ssn": (ssn, r"[0-8][0-9]{2}-[0-9]{2}-[0-9]{4}", 11, "0-8", (0,), frozenset({3})),
    "fr.nir": (
        nir,
        r"[12] ?[0-9]{2} ?[0-9]{2} ?(?:[0-9]{2}|2[AB]) ?[0-9]{3} ?[0-9]{3} ?[0-9]{2}",
        21,
        "12",
        (0,),
        None,
    ),
    "es.dni": (dni, r"[0-9]{8}-?[A-Z]", 10, "0-9", (0,), frozenset({8})),
    "es.nie": (nie, r"[XYZ]-?[0-9]{7}-?[A-Z]", 11, "XYZ", (1, 2), frozenset({7})),
    "it.codicefiscale": (
        codicefiscale,
        r"[A-Z]{6}[0-9LMNPQRSTUV]{2}[A-EHLMPRST][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z]",
        16,
        "A-Z",
        (6,),
        None,
    ),
    "br.cpf": (cpf, r"[0-9]{3}\.[0-9]{3}\.[0-9]{3}-[0-9]{2}", 14, "0-9", (0,), frozenset({3})),
    "se.personnummer": (
        personnummer,
        r"(?:[0-9]{2})?[0-9]{6}[-+][0-9]{4}",
        13,
        "0-9",
        (0,),
        frozenset({6, 8}),
    ),
    "dk.cpr": (cpr, r"[0-3][0-9][01][0-9]{3}-[0-9]{4}", 11, "0-3", (0,), frozenset({6})),
    "in.aadhaar": (aadhaar, r"[2-9][0-9]{3} [0-9]{4} [0-9]{4}", 14, "2-9", (0,), frozenset({4})),
    "de.idnr": (idnr, r"[1-9][0-9](?: ?[0-9]{3}){3}", 14, "1-9", (0,), frozenset({2, 11})),
    "nl.bsn": (bsn, r"[0-9]{4}\.?[0-9]{2}\.?[0-9]{3}", 11, "0-9", (0,), frozenset({4, 9})),
    "pl.pesel": (pesel, r"[0-9]{11}", 11, "0-9", (0,), frozenset({11})),
}


def _accept(check: Callable[[str], bool]) -> Accept:
    def accept(text: str, match: re.Match[str]) -> Span | None:
        start, end = match.span()
        if not clear_edges(text, start, end):
            return None
        return (start, end) if check(match.group()) else None

    return accept


def checked_ids() -> tuple[str, ...]:
    """The names this module can check: the settings' ``NATIONAL_IDS`` (a test holds them equal)."""
    return tuple(_TABLE)


def national_id(name: str) -> Recognizer:
    """The recognizer of one national id by its name in ``NATIONAL_IDS``; KeyError if unknown."""
    module, pattern, max_len, first, leads, first_runs = _TABLE[name]
    check: Callable[[str], bool] = module.is_valid
    return Recognizer(
        kind=PII_NATIONAL_ID,
        pattern=re.compile(pattern),
        tail=re.compile(rf"[{first}][0-9A-Z .+\-]{{0,{max_len}}}\Z"),
        max_len=max_len,
        accept=_accept(check),
        leads=leads,
        first_runs=first_runs,
        starts=char_class(first),
        follows=_FOLLOWS.get(name),
    )
