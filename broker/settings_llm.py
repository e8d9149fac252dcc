"""The ``[llm]`` section of the broker's settings: providers and their models.

The catalogue built from it (model name -> provider) is ``broker.protocols.llm.catalog``.
Provider keys are read from the environment once, at load time (``resolve_llm_settings``),
like upstream credentials.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import msgspec

_Positive = Annotated[float, msgspec.Meta(gt=0)]
_NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class LlmProvider(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One OpenAI-compatible provider. ``base_url`` ends before ``/chat/completions``
    (e.g. ``https://api.openai.com/v1``). ``key`` is filled from ``$key_env`` at load time."""

    base_url: str
    key_env: str = ""
    models: tuple[str, ...] = ()
    # Currency units per million tokens: the cost of a call in micro-units is
    # tokens_in * price_in_per_mtok + tokens_out * price_out_per_mtok.
    price_in_per_mtok: _NonNegative = 0.0
    price_out_per_mtok: _NonNegative = 0.0
    timeout_s: _Positive = 120.0
    key: str = ""


class LlmSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    providers: dict[str, LlmProvider] = msgspec.field(default_factory=dict)
    # Output tokens reserved when a request names no max_tokens (the provider may still write
    # more; the actual usage is what is charged).
    default_max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 4096
    # Requests asking for more output tokens than this are refused (0: no ceiling).
    max_tokens_limit: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Bytes of request body (or answer text) counted as one token when a provider reports no
    # usage and for the input reserve. 3 covers ordinary text; 1 is a strict upper bound.
    bytes_per_token: _Positive = 3.0
    # Per-agent call rate (token bucket / GCRA); 0 disables the rate limit.
    rate_per_s: _NonNegative = 0.0
    burst: Annotated[int, msgspec.Meta(ge=1)] = 10
    # A reservation lives this long if the broker dies before it settles.
    reservation_ttl_s: Annotated[int, msgspec.Meta(ge=1)] = 600


class LlmConfigError(ValueError):
    """The ``[llm]`` section cannot be used; the message names the key, ``path`` is its keys."""

    def __init__(self, message: str, path: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.path = path


def resolve_llm_settings(llm: LlmSettings, env: Mapping[str, str]) -> LlmSettings:
    """``llm`` with every provider's key read from its ``key_env``; raises LlmConfigError if a
    variable is unset, a model is served by two providers or a base URL is not http(s)."""
    seen: dict[str, str] = {}
    providers: dict[str, LlmProvider] = {}
    for name, provider in llm.providers.items():
        if not provider.base_url.startswith(("http://", "https://")):
            raise LlmConfigError(
                f"llm.providers.{name}.base_url must be an http(s) URL",
                ("llm", "providers", name, "base_url"),
            )
        if provider.key_env and provider.key_env not in env:
            raise LlmConfigError(
                f"llm.providers.{name}.key_env names ${provider.key_env}, which is not set",
                ("llm", "providers", name, "key_env"),
            )
        for model in provider.models:
            if model in seen:
                raise LlmConfigError(
                    f"model {model!r} is served by {seen[model]} and {name}",
                    ("llm", "providers", name, "models"),
                )
            seen[model] = name
        key = env[provider.key_env] if provider.key_env else provider.key
        providers[name] = msgspec.structs.replace(provider, key=key)
    return msgspec.structs.replace(llm, providers=providers)
