"""What a scan finds: a typed span of text. Values never leave the scan; types do.

Type names are ``<family>:<name>``: ``pii:email``, ``secret:aws_key``. A pattern in settings may
end in ``*`` (``secret:*``, ``*``) to name every type with that prefix.
"""

# ruff: noqa: S105 - the SECRET_* constants are the names of types, not secrets

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

PII_EMAIL = "pii:email"
PII_PHONE = "pii:phone"
PII_CARD = "pii:card"
PII_IBAN = "pii:iban"
PII_NATIONAL_ID = "pii:national_id"
PII_IP = "pii:ip"
PII_PERSON = "pii:person"  # Presidio only
PII_LOCATION = "pii:location"  # Presidio only

SECRET_AWS_KEY = "secret:aws_key"
SECRET_AWS_SECRET = "secret:aws_secret"
SECRET_GITHUB_TOKEN = "secret:github_token"
SECRET_GITLAB_TOKEN = "secret:gitlab_token"
SECRET_SLACK_TOKEN = "secret:slack_token"
SECRET_SLACK_WEBHOOK = "secret:slack_webhook"
SECRET_STRIPE_KEY = "secret:stripe_key"
SECRET_OPENAI_KEY = "secret:openai_key"
SECRET_ANTHROPIC_KEY = "secret:anthropic_key"
SECRET_GOOGLE_API_KEY = "secret:google_api_key"
SECRET_GOOGLE_OAUTH_SECRET = "secret:google_oauth_secret"
SECRET_NPM_TOKEN = "secret:npm_token"
SECRET_HUGGINGFACE_TOKEN = "secret:huggingface_token"
SECRET_SENDGRID_KEY = "secret:sendgrid_key"
SECRET_PRIVATE_KEY = "secret:private_key"
SECRET_JWT = "secret:jwt"


@dataclass(frozen=True, slots=True, order=True)
class Finding:
    """A detected value: ``text[start:end]`` is of type ``kind``."""

    start: int
    end: int
    kind: str


@lru_cache(maxsize=4096)
def type_matches(pattern: str, kind: str) -> bool:
    """Whether the type pattern (``*``, ``secret:*``, ``pii:email``) names ``kind``."""
    if pattern == "*":
        return True
    if pattern.endswith(":*"):
        return kind.startswith(pattern[:-1])
    return pattern == kind


def pattern_specificity(pattern: str) -> int:
    """2 for an exact type, 1 for ``family:*``, 0 for ``*``: the more specific wins."""
    if pattern == "*":
        return 0
    return 1 if pattern.endswith(":*") else 2


def any_matches(patterns: Iterable[str], kind: str) -> bool:
    return any(type_matches(p, kind) for p in patterns)


def placeholder_label(kind: str) -> str:
    """``pii:email`` -> ``EMAIL``; ``secret:aws_key`` -> ``AWS_KEY``: the placeholder's name."""
    return kind.partition(":")[2].upper() or "VALUE"
