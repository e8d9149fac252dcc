"""The ``[datacontrols]`` section: what is detected, and what is done with it, per direction,
caller, target, model and skill; and where tagged work may not flow. See docs/datacontrols.md.

A foundation module (it imports nothing of the broker): the type-name rules and the names of the
national ids live here so the settings can check them; ``broker.datacontrols`` uses them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Literal

import msgspec
import phonenumbers

_TYPE_NAME = re.compile(r"[a-z][a-z0-9_]*:[a-z][a-z0-9_]*\Z")
_TYPE_PATTERN = re.compile(r"(?:\*|[a-z][a-z0-9_]*:\*|[a-z][a-z0-9_]*:[a-z][a-z0-9_]*)\Z")

# The national ids broker.datacontrols.national_ids can check, and those on by default (the
# others are bare runs of digits that one random number in ten passes).
NATIONAL_IDS: tuple[str, ...] = (
    "us.ssn",
    "fr.nir",
    "es.dni",
    "es.nie",
    "it.codicefiscale",
    "br.cpf",
    "se.personnummer",
    "dk.cpr",
    "in.aadhaar",
    "de.idnr",
    "nl.bsn",
    "pl.pesel",
)
DEFAULT_NATIONAL_IDS: tuple[str, ...] = NATIONAL_IDS[:9]


def is_type_name(name: str) -> bool:
    """``family:name``, lower case: ``pii:email``, ``secret:aws_key``."""
    return _TYPE_NAME.match(name) is not None


def is_type_pattern(pattern: str) -> bool:
    """``*``, ``family:*`` or an exact type name."""
    return _TYPE_PATTERN.match(pattern) is not None


Action = Literal["allow", "tag", "redact", "pseudonymize", "block"]
Direction = Literal["request", "response", "both"]

_Globs = tuple[str, ...]


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class DataRule(_Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Actions for the types found in traffic this rule matches. A list left empty matches
    everything; names are shell-style patterns (``team-*``). ``agents`` names A2A targets,
    ``models`` LLM models; a rule that names only one of them applies to that kind of call."""

    direction: Direction = "both"
    callers: _Globs = ()
    agents: _Globs = ()
    models: _Globs = ()
    skills: _Globs = ()
    # type pattern ("pii:email", "secret:*", "*") -> action; the most specific pattern wins.
    actions: dict[str, Action] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_type_patterns(self.actions, "actions")


class FlowRule(_Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Work tagged with any of ``tags`` (type patterns) may not go to these agents or models."""

    tags: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)]
    agents: _Globs = ()
    models: _Globs = ()

    def __post_init__(self) -> None:
        _check_type_patterns(self.tags, "tags")
        if not self.agents and not self.models:
            raise ValueError("a flow rule names `agents` or `models` it forbids")


class PresidioSettings(_Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Presidio entity -> our type; only these are reported (built-in recognizers do the rest).
    entities: dict[str, str] = msgspec.field(
        default_factory=lambda: {"PERSON": "pii:person", "LOCATION": "pii:location"}
    )
    language: str = "en"
    min_score: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.6


class DataControlsSettings(_Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = False
    # builtin: precompiled patterns and validators; presidio: those plus Presidio's analyzer for
    # names and places (install the `presidio` extra and a spaCy model).
    engine: Literal["builtin", "presidio"] = "builtin"
    # Countries whose phone numbers written without a country code are recognised.
    phone_regions: tuple[str, ...] = ("US", "GB")
    national_ids: tuple[str, ...] = DEFAULT_NATIONAL_IDS  # see docs/datacontrols.md for the list
    ip_private: bool = False  # also report private, loopback and link-local addresses
    # Text scanned per request or response; beyond it the call is refused (DATA_SCAN_LIMIT).
    max_scan_chars: Annotated[int, msgspec.Meta(ge=1)] = 4 * 1024 * 1024
    # The action for a type no rule names.
    default_action: Action = "tag"
    rules: tuple[DataRule, ...] = ()
    flows: tuple[FlowRule, ...] = ()
    presidio: PresidioSettings = msgspec.field(default_factory=PresidioSettings)

    def __post_init__(self) -> None:
        unknown = [n for n in self.national_ids if n not in NATIONAL_IDS]
        if unknown:
            raise ValueError(
                f"unknown national id {unknown[0]!r}; known: {', '.join(NATIONAL_IDS)}"
            )
        regions = phonenumbers.SUPPORTED_REGIONS
        bad = [r for r in self.phone_regions if r not in regions]
        if bad:
            raise ValueError(f"unknown phone region {bad[0]!r} (ISO 3166 alpha-2, upper case)")


def _check_type_patterns(patterns: Iterable[str], what: str) -> None:
    for pattern in patterns:
        if not is_type_pattern(pattern):
            raise ValueError(
                f"{what}: {pattern!r} is not a type (`pii:email`), a family (`secret:*`) or `*`"
            )
