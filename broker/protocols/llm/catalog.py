"""The model catalogue: which provider serves each model, and what a call to it costs."""

from __future__ import annotations

import functools

import msgspec

from broker.settings_llm import LlmProvider, LlmSettings


class ModelRoute(msgspec.Struct, frozen=True):
    """Where calls for one model go."""

    model: str
    provider_name: str
    provider: LlmProvider

    def url(self, path: str) -> str:
        """The provider URL for ``path`` (e.g. ``/chat/completions``)."""
        return self.provider.base_url.rstrip("/") + path

    def cost_micro(self, tokens_in: int, tokens_out: int) -> int:
        """Micro-units for this many tokens, rounded up (never under-charged)."""
        price_in, price_out = self.provider.price_in_per_mtok, self.provider.price_out_per_mtok
        if not price_in and not price_out:
            return 0  # a free model (what the sum below gives, without its float rounding)
        return _cost_micro(price_in, price_out, tokens_in, tokens_out)


@functools.lru_cache(maxsize=4096)
def _cost_micro(price_in: float, price_out: float, tokens_in: int, tokens_out: int) -> int:
    """``ModelRoute.cost_micro``, remembered: a call's reserve and its usage come in few
    shapes, and ``round(x, 6)`` formats the float in decimal (about a microsecond)."""
    exact = tokens_in * price_in + tokens_out * price_out
    # round() first so that binary float noise (2500.0000000003) does not add a unit.
    return int(-(-round(exact, 6) // 1))


class ModelCatalog:
    """The models the broker serves, each with its provider."""

    def __init__(self, llm: LlmSettings) -> None:
        self._routes = {
            model: ModelRoute(model, name, provider)
            for name, provider in llm.providers.items()
            for model in provider.models
        }

    def route(self, model: str) -> ModelRoute | None:
        return self._routes.get(model)

    def models(self) -> list[ModelRoute]:
        """Every served model, sorted by name."""
        return [self._routes[m] for m in sorted(self._routes)]
