"""The recognizer contract and the personal-data recognizers (e-mail, phone, card, IBAN, IP).

A recognizer is a precompiled candidate pattern plus a validator (``accept``), so a value is
reported only when it checks out (Luhn, IBAN mod 97, a valid phone number, a routable address).
Patterns have no look-behind: the validator checks the characters around a candidate, which
keeps the regex engine on its fast literal and character-set searches.

For the streaming scanner every recognizer also states ``max_len``, the longest text a candidate
spans, and ``tail``, a pattern that matches at the end of a text every suffix that could still be
the beginning of a candidate (a superset is fine: it only holds text back longer).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn

from broker.datacontrols.findings import PII_CARD, PII_EMAIL, PII_IBAN, PII_IP, PII_PHONE

Span = tuple[int, int]
Accept = Callable[[str, "re.Match[str]"], Span | None]
# (raw start, raw end, value span or None): the raw span is all the text the candidate read.
Candidate = tuple[int, int, Span | None]

WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
TOKEN = WORD | {"-"}


DIGIT_RUNS = re.compile(r"[0-9]+")
_DIGITS = frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class Recognizer:
    """Finds one type. ``gate``: substrings one of which every candidate contains (a cheap
    test that skips the pattern); empty means always run.

    Numbers (``leads`` set) are not searched for: the detector finds the runs of digits once,
    and the pattern is tried only ``lead`` characters before the start of each run whose length
    is in ``first_runs`` (None: any). One pass over the text then serves every numeric type.
    """

    kind: str
    pattern: re.Pattern[str]
    tail: re.Pattern[str]
    max_len: int
    accept: Accept
    gate: tuple[str, ...] = ()
    leads: tuple[int, ...] | None = None
    first_runs: frozenset[int] | None = None
    starts: frozenset[str] = frozenset()  # numeric: the characters a candidate may start with
    # numeric: the characters that may follow the first run of digits (None: any, or the end)
    follows: frozenset[str] | None = None

    def candidates(self, text: str, pos: int) -> Iterator[Candidate]:
        for gate in self.gate:  # a loop, not any(): this runs for every text scanned
            if gate in text:
                break
        else:
            if self.gate:
                return
        search = self.pattern.search
        match = search(text, pos)
        while match is not None:
            span = self.accept(text, match)
            yield match.start(), match.end(), span
            # Look again one character on, not after the candidate: a greedy candidate may have
            # read into a value that starts inside it; the detector resolves the overlaps.
            match = search(text, match.start() + 1)

    def anchored_at(self, text: str, start: int) -> Candidate | None:
        """The candidate starting at ``start`` (a lead before a run of digits), if any."""
        match = self.pattern.match(text, start)
        return None if match is None else (match.start(), match.end(), self.accept(text, match))


def char_class(spec: str) -> frozenset[str]:
    """The characters of a regex-style class body: ``"0-8"``, ``"A-Z"``, ``"+(0-9"``."""
    chars: set[str] = set()
    i = 0
    while i < len(spec):
        if i + 2 < len(spec) and spec[i + 1] == "-":
            chars.update(chr(c) for c in range(ord(spec[i]), ord(spec[i + 2]) + 1))
            i += 3
        else:
            chars.add(spec[i])
            i += 1
    return frozenset(chars)


def bounded(text: str, start: int, end: int, left: frozenset[str], right: frozenset[str]) -> bool:
    """The value is not glued to a longer run: no ``left`` char before, no ``right`` char after."""
    return (start == 0 or text[start - 1] not in left) and (
        end == len(text) or text[end] not in right
    )


_ALNUM = WORD - {"_"}


def clear_edges(text: str, start: int, end: int, joiners: str = "-.+") -> bool:
    """No word character touches the value, nor a joiner (``-.+``) that glues it to one:
    ``id 123-45-6789.`` is clear, ``x-123-45-6789`` and ``123-45-6789.5`` are not."""
    if start > 0:
        before = text[start - 1]
        if before in WORD or (before in joiners and start > 1 and text[start - 2] in _ALNUM):
            return False
    if end < len(text):
        after = text[end]
        if after in WORD or (after in joiners and end + 1 < len(text) and text[end + 1] in _ALNUM):
            return False
    return True


def shorter(value: str, separators: str, most: int = 4) -> Iterator[str]:
    """``value``, then up to ``most`` prefixes of it that end before a separator, longest
    first: a greedy pattern may have read the next number on the line as part of this one."""
    yield value
    end = len(value)
    for _ in range(most):
        end = max(value.rfind(sep, 0, end) for sep in separators)
        if end <= 0:
            return
        yield value[:end].rstrip(separators)


def digits_of(value: str) -> str:
    return "".join(c for c in value if c.isdigit())


# --- e-mail --------------------------------------------------------------------------------------

_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_DOMAIN = re.compile(
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24})(?![A-Za-z0-9-])"
)
_EMAIL_MAX = 64 + 1 + 8 * 64 + 24


class EmailRecognizer(Recognizer):
    """An address ``local@domain.tld``: found from its ``@``, the local part read leftwards."""

    def candidates(self, text: str, pos: int) -> Iterator[Candidate]:
        if "@" not in text:
            return
        for match in _DOMAIN.finditer(text, pos):
            at = match.start()
            start = at
            while start > 0 and at - start <= 64 and text[start - 1] in _LOCAL:
                start -= 1
            yield start, match.end(), _email_span(text, start, at, match.end())


def _email_span(text: str, start: int, at: int, end: int) -> Span | None:
    local = text[start:at]
    if not 1 <= len(local) <= 64 or (start > 0 and text[start - 1] in _LOCAL):
        return None
    if local[0] == "." or local[-1] == "." or ".." in local:
        return None
    return start, end


def email() -> Recognizer:
    return EmailRecognizer(
        kind=PII_EMAIL,
        pattern=_DOMAIN,
        tail=re.compile(
            r"[A-Za-z0-9._%+-]{1,65}(?:@[A-Za-z0-9.-]{0,540})?\Z|@[A-Za-z0-9.-]{0,540}\Z"
        ),
        max_len=_EMAIL_MAX,
        accept=lambda _t, _m: None,  # unused: candidates() is its own
        gate=("@",),
    )


# --- phone numbers -------------------------------------------------------------------------------

_PHONE_LEFT = WORD | {"+", "-", "."}
_PHONE_RIGHT = WORD | {"-"}


def _phone_accept(regions: tuple[str, ...], international: bool) -> Accept:
    def accept(text: str, match: re.Match[str]) -> Span | None:
        start = match.start()
        if start > 0 and text[start - 1] in _PHONE_LEFT:
            return None
        if (
            not international
            and start > 1
            and text[start - 1] in " -"
            and text[start - 2] in _DIGITS
        ):
            return None  # the rest of a longer number ("4111 1111 …"), not a number of its own
        for value in shorter(match.group(), " "):
            end = start + len(value)
            if bounded(text, start, end, _PHONE_LEFT, _PHONE_RIGHT) and valid(value):
                return start, end
        return None

    def valid(value: str) -> bool:
        count = len(digits_of(value))
        if international:
            return 8 <= count <= 15 and _valid_phone(value, None)
        if not 9 <= count <= 12 or _looks_like_date(value):
            return False
        return any(_valid_phone(value, r) for r in regions)

    return accept


def _valid_phone(value: str, region: str | None) -> bool:
    if value.startswith("00"):
        value = "+" + value[2:]
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(number))


_DATE = re.compile(
    r"(?:19|20)[0-9]{2}[-./][01]?[0-9][-./][0-3]?[0-9]\Z|[0-3]?[0-9][-./][01]?[0-9][-./](?:19|20)[0-9]{2}\Z"
)


def _looks_like_date(value: str) -> bool:
    return _DATE.match(value) is not None


def phone_international() -> Recognizer:
    """``+49 30 1234567``, ``0044 20 7946 0958``: any valid number with its country code."""
    return Recognizer(
        kind=PII_PHONE,
        pattern=re.compile(r"(?:\+|00)[1-9][0-9 ().\-]{5,20}[0-9]"),
        tail=re.compile(r"[+0][0-9 ().\-]{0,24}\Z"),
        max_len=24,
        accept=_phone_accept((), international=True),
        leads=(1, 0),
        starts=char_class("+0"),
    )


def phone_national(regions: tuple[str, ...]) -> Recognizer:
    """``(415) 555-0132``, ``020 7946 0958``: a number valid in one of ``regions``, written
    with separators (a bare run of digits is too often something else)."""
    return Recognizer(
        kind=PII_PHONE,
        pattern=re.compile(r"\(?[0-9]{2,5}\)?[ .\-][0-9]{2,8}(?:[ .\-][0-9]{2,8}){0,3}"),
        tail=re.compile(r"[(0-9][0-9 ().\-]{0,43}\Z"),
        max_len=43,
        accept=_phone_accept(regions, international=False),
        leads=(1, 0),
        first_runs=frozenset(range(2, 6)),
        starts=char_class("(0-9"),
        follows=frozenset(" .-)"),
    )


# --- payment cards -------------------------------------------------------------------------------

_CARD_LEFT = WORD | {"+", "-", "."}
_CARD_PREFIXES: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    # (first digits from, to (inclusive, same length), lengths): the networks' IIN ranges.
    ("4", "4", (13, 16, 19)),  # Visa
    ("51", "55", (16,)),  # Mastercard
    ("2221", "2720", (16,)),  # Mastercard 2-series
    ("34", "34", (15,)),  # American Express
    ("37", "37", (15,)),
    ("6011", "6011", (16, 17, 18, 19)),  # Discover
    ("644", "649", (16, 17, 18, 19)),
    ("65", "65", (16, 17, 18, 19)),
    ("3528", "3589", (16, 17, 18, 19)),  # JCB
    ("300", "305", (14, 15, 16, 17, 18, 19)),  # Diners Club
    ("36", "36", (14, 15, 16, 17, 18, 19)),
    ("38", "39", (16, 17, 18, 19)),
    ("62", "62", (16, 17, 18, 19)),  # UnionPay
)


def card_network_ok(number: str) -> bool:
    return any(
        low <= number[: len(low)] <= high and len(number) in lengths
        for low, high, lengths in _CARD_PREFIXES
    )


def _card_accept(text: str, match: re.Match[str]) -> Span | None:
    start = match.start()
    if start > 0 and text[start - 1] in _CARD_LEFT:
        return None
    for value in shorter(match.group(), " -"):
        end = start + len(value)
        if bounded(text, start, end, _CARD_LEFT, WORD) and _card_ok(value):
            return start, end
    return None


def _card_ok(value: str) -> bool:
    number = digits_of(value)
    separators = {c for c in value if not c.isdigit()}
    return len(separators) <= 1 and card_network_ok(number) and luhn.is_valid(number)


def card() -> Recognizer:
    """13-19 digits, optionally grouped by spaces or dashes, of a card network, Luhn-valid."""
    return Recognizer(
        kind=PII_CARD,
        pattern=re.compile(r"[2-6][0-9](?:[ \-]?[0-9]){11,17}"),
        tail=re.compile(r"[2-6][0-9 \-]{0,37}\Z"),
        max_len=37,
        accept=_card_accept,
        leads=(0,),
        first_runs=frozenset(range(2, 20)),
        starts=char_class("2-6"),
    )


# --- IBAN ----------------------------------------------------------------------------------------


def _iban_accept(text: str, match: re.Match[str]) -> Span | None:
    start, end = match.span()
    if start > 0 and text[start - 1] in WORD:
        return None
    value = match.group()
    # A trailing capitalised word may have been read as a last group: try without it.
    for _ in range(3):
        if (end == len(text) or text[end] not in WORD) and stdnum_iban.is_valid(value):
            return start, end
        cut = value.rfind(" ")
        if cut < 0:
            return None
        value = value[:cut]
        end = start + cut
    return None


def iban() -> Recognizer:
    """An IBAN, grouped by four or not, whose country length and mod-97 check hold."""
    return Recognizer(
        kind=PII_IBAN,
        pattern=re.compile(r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?"),
        tail=re.compile(r"[A-Z][A-Z0-9 ]{0,43}\Z"),
        max_len=43,
        accept=_iban_accept,
        leads=(2,),
        first_runs=frozenset(range(2, 33)),
        starts=char_class("A-Z"),
    )


# --- IP addresses --------------------------------------------------------------------------------

_IP_LEFT = WORD | {".", ":"}


def _ip_ok(value: str, include_private: bool) -> bool:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return False
    return include_private or address.is_global


def _ipv4_accept(include_private: bool) -> Accept:
    def accept(text: str, match: re.Match[str]) -> Span | None:
        start, end = match.span()
        if not bounded(text, start, end, _IP_LEFT, WORD):
            return None
        if end + 1 < len(text) and text[end] == "." and text[end + 1].isdigit():
            return None  # 1.2.3.4.5: a version or an OID, not an address
        return (start, end) if _ip_ok(match.group(), include_private) else None

    return accept


def _ipv6_accept(include_private: bool) -> Accept:
    def accept(text: str, match: re.Match[str]) -> Span | None:
        start, end = match.span()
        value = match.group()
        if value.endswith(":") and not value.endswith("::"):
            value, end = value[:-1], end - 1  # "… 2001:db8::1: it answers" ends a sentence
        if not bounded(text, start, end, _IP_LEFT, WORD) or value.count(":") < 2:
            return None
        return (start, end) if _ip_ok(value, include_private) else None

    return accept


def ipv4(include_private: bool) -> Recognizer:
    return Recognizer(
        kind=PII_IP,
        pattern=re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"),
        tail=re.compile(r"[0-9][0-9.]{0,15}\Z"),
        max_len=15,
        accept=_ipv4_accept(include_private),
        leads=(0,),
        first_runs=frozenset((1, 2, 3)),
        starts=char_class("0-9"),
        follows=frozenset("."),
    )


_HEX = frozenset("0123456789abcdefABCDEF")
# Led by a literal, so searched at memchr speed: one pass that the times in prose ("10:30") fail.
_TWO_COLONS = re.compile(r":[0-9A-Fa-f]{0,4}:")


class Ipv6Recognizer(Recognizer):
    """Tried only where an address can start: the hex group before a colon (or the colon)."""

    def candidates(self, text: str, pos: int) -> Iterator[Candidate]:
        if _TWO_COLONS.search(text, pos) is None:
            return  # every candidate holds two colons at most four hex digits apart
        colon = text.find(":", pos)
        last = -1
        while colon >= 0:
            start = colon
            while start > pos and colon - start < 4 and text[start - 1] in _HEX:
                start -= 1
            if start > last and (start == 0 or text[start - 1] not in _HEX | {":"}):
                match = self.pattern.match(text, start)
                if match is not None:
                    last = match.end()
                    yield match.start(), match.end(), self.accept(text, match)
            colon = text.find(":", colon + 1)


def ipv6(include_private: bool) -> Recognizer:
    """Full and ``::``-compressed forms; embedded IPv4 (``::ffff:1.2.3.4``) is not read."""
    return Ipv6Recognizer(
        kind=PII_IP,
        pattern=re.compile(r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:]{0,35}"),
        tail=re.compile(r"[0-9A-Fa-f:]{1,46}\Z"),
        max_len=45,
        accept=_ipv6_accept(include_private),
        gate=(":",),
    )
