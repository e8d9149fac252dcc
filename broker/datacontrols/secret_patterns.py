"""Secrets: API keys and tokens of common providers, PEM private keys, JWTs.

Each provider's key has a fixed prefix and alphabet, so a literal-prefix pattern finds it
cheaply; the validator refuses a candidate glued to a longer token (``xAKIA…``, ``…AKIA…9x``).
Generic "high entropy" strings and passwords in prose are not detected (docs/datacontrols.md).
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from broker.datacontrols import findings as f
from broker.datacontrols.recognizers import (
    TOKEN,
    WORD,
    Accept,
    Recognizer,
    Span,
    bounded,
    clear_edges,
)

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def _token_accept(left: frozenset[str] = TOKEN, right: frozenset[str] = TOKEN) -> Accept:
    def accept(text: str, match: re.Match[str]) -> Span | None:
        start, end = match.span()
        return (start, end) if bounded(text, start, end, left, right) else None

    return accept


_KEY_CHARS = "A-Za-z0-9_\\-"
_WORD_CHARS = "A-Za-z0-9_"

# Keys with a fixed prefix: (type, pattern, longest, first character, alphabet, gate).
_TOKENS: tuple[tuple[str, str, int, str, str, tuple[str, ...]], ...] = (
    (
        f.SECRET_AWS_KEY,
        r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}",
        20,
        "A",
        "0-9A-Z",
        ("AKIA", "ASIA", "ABIA", "ACCA"),
    ),
    (
        f.SECRET_GITHUB_TOKEN,
        r"gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82}",
        93,
        "g",
        _WORD_CHARS,
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    (f.SECRET_GITLAB_TOKEN, r"glpat-[A-Za-z0-9_\-]{20}", 26, "g", _KEY_CHARS, ("glpat-",)),
    (f.SECRET_SLACK_TOKEN, r"xox[abposr]-[A-Za-z0-9\-]{10,100}", 105, "x", _KEY_CHARS, ("xox",)),
    (
        f.SECRET_STRIPE_KEY,
        r"[rs]k_(?:live|test)_[A-Za-z0-9]{10,99}",
        107,
        "rs",
        _WORD_CHARS,
        ("k_live_", "k_test_"),
    ),
    (f.SECRET_GOOGLE_API_KEY, r"AIza[0-9A-Za-z_\-]{35}", 39, "A", _KEY_CHARS, ("AIza",)),
    (
        f.SECRET_GOOGLE_OAUTH_SECRET,
        r"GOCSPX-[A-Za-z0-9_\-]{28}",
        35,
        "G",
        _KEY_CHARS,
        ("GOCSPX-",),
    ),
    (f.SECRET_NPM_TOKEN, r"npm_[A-Za-z0-9]{36}", 40, "n", _WORD_CHARS, ("npm_",)),
    (f.SECRET_HUGGINGFACE_TOKEN, r"hf_[A-Za-z]{34}", 37, "h", "A-Za-z_", ("hf_",)),
    (
        f.SECRET_SENDGRID_KEY,
        r"SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}",
        69,
        "S",
        "A-Za-z0-9_.\\-",
        ("SG.",),
    ),
)


def _token_recognizers() -> list[Recognizer]:
    return [
        Recognizer(
            kind=kind,
            pattern=re.compile(pattern),
            tail=re.compile(rf"[{first}][{alphabet}]{{0,{max_len}}}\Z"),
            max_len=max_len,
            accept=_token_accept(),
            gate=gate,
        )
        for kind, pattern, max_len, first, alphabet, gate in _TOKENS
    ]


def _mixed_accept(prefix_len: int, refuse: tuple[str, ...] = ()) -> Accept:
    """A random key body has digits, upper and lower case: hyphenated words do not."""

    def accept(text: str, match: re.Match[str]) -> Span | None:
        start, end = match.span()
        value = match.group()
        if not bounded(text, start, end, TOKEN, TOKEN) or value.startswith(refuse):
            return None
        body = value[prefix_len:]
        mixed = (
            any(c.isdigit() for c in body)
            and any(c.isupper() for c in body)
            and any(c.islower() for c in body)
        )
        return (start, end) if mixed else None

    return accept


def _jwt_accept(text: str, match: re.Match[str]) -> Span | None:
    start, end = match.span()
    if not clear_edges(text, start, end, joiners="-."):
        return None
    header = match.group().split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError):
        return None
    return (start, end) if isinstance(decoded, dict) and "alg" in decoded else None


def _aws_secret_accept(text: str, match: re.Match[str]) -> Span | None:
    start, end = match.span(1)
    return (
        (start, end)
        if bounded(text, start, end, _ALNUM | {"/", "+"}, _ALNUM | {"/", "+", "="})
        else None
    )


_PEM = (
    r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY-----"
    r"(?:[\s\S]{0,8192}?-----END[A-Z0-9 ]{0,40}PRIVATE KEY-----|[A-Za-z0-9+/=\s]{0,8192})"
)
_PEM_MAX = 10 + 40 + 16 + 8192 + 8 + 40 + 16


def secret_recognizers() -> list[Recognizer]:
    """Every built-in secret recognizer, most specific first (order breaks ties)."""
    return [
        Recognizer(
            kind=f.SECRET_PRIVATE_KEY,
            pattern=re.compile(_PEM),
            # An unfinished block, or the start of the marker itself.
            tail=re.compile(
                r"-----BEGIN(?:(?!-----END[A-Z0-9 ]{0,40}PRIVATE KEY-----)[\s\S]){0,8400}\Z"
                r"|-{1,5}(?:B(?:E(?:G(?:I(?:N)?)?)?)?)?\Z"
            ),
            max_len=_PEM_MAX,
            accept=lambda _t, m: m.span(),
            gate=("-----BEGIN",),
        ),
        Recognizer(
            kind=f.SECRET_JWT,
            pattern=re.compile(
                r"eyJ[A-Za-z0-9_\-]{5,1000}\.eyJ[A-Za-z0-9_\-]{5,4000}\.[A-Za-z0-9_\-]{0,1000}"
            ),
            tail=re.compile(r"e[A-Za-z0-9_\-.]{0,6010}\Z"),
            max_len=6010,
            accept=_jwt_accept,
            gate=("eyJ",),
        ),
        Recognizer(
            kind=f.SECRET_AWS_SECRET,
            pattern=re.compile(
                r"(?i:aws_?secret(?:_?access)?(?:_?key)?)[\"']?\s{0,4}[:=]\s{0,4}"
                r"[\"']?([A-Za-z0-9/+=]{40})"
            ),
            # Past the name, anything; before it, a prefix of the name itself.
            tail=re.compile(
                r"(?i:aws_?secret)[\s\S]{0,70}\Z"
                r"|(?i:a(?:w(?:s(?:_?(?:s(?:e(?:c(?:r(?:e)?)?)?)?)?)?)?)?)\Z"
            ),
            max_len=80,
            accept=_aws_secret_accept,
            gate=("ecret", "ECRET"),
        ),
        Recognizer(
            kind=f.SECRET_SLACK_WEBHOOK,
            pattern=re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9_/]{20,120}"),
            tail=re.compile(r"h[A-Za-z0-9_/:.]{0,154}\Z"),
            max_len=154,
            accept=_token_accept(WORD, WORD | {"/"}),
            gate=("hooks.slack.com",),
        ),
        Recognizer(
            kind=f.SECRET_ANTHROPIC_KEY,
            pattern=re.compile(r"sk-ant-(?:api|admin|oat)[0-9]{2}-[A-Za-z0-9_\-]{32,200}"),
            tail=re.compile(rf"s[{_KEY_CHARS}]{{0,216}}\Z"),
            max_len=216,
            accept=_token_accept(),
            gate=("sk-ant-",),
        ),
        Recognizer(
            kind=f.SECRET_OPENAI_KEY,
            pattern=re.compile(r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,200}"),
            tail=re.compile(rf"s[{_KEY_CHARS}]{{0,211}}\Z"),
            max_len=211,
            accept=_mixed_accept(3, refuse=("sk-ant-",)),
            gate=("sk-",),
        ),
        *_token_recognizers(),
    ]
