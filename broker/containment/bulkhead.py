"""A bulkhead per upstream agent: at most N calls in flight to it through this process.

One slow or hanging agent would otherwise hold every pooled upstream connection and every
worker's attention, and calls to healthy agents would queue behind it. Counted per process, with
no store round trip (docs/decisions/0022); an entry exists only while calls are in flight.
"""

from __future__ import annotations

from broker.settings_containment import ContainmentSettings


class AtCapacityError(Exception):
    """The agent's cap is reached; ``limit`` is the cap."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


class Bulkhead:
    def __init__(self, settings: ContainmentSettings) -> None:
        self._settings = settings
        self._in_flight: dict[str, int] = {}

    @property
    def caps_any(self) -> bool:
        """Some agent has a cap (the settings are fixed): else ``enter`` never counts."""
        settings = self._settings
        return bool(settings.max_concurrent_per_agent) or any(
            settings.agent_max_concurrent.values()
        )

    def enter(self, agent: str) -> bool:
        """Count one more call to ``agent``; False if it is not capped (nothing to leave).
        Raises AtCapacityError if its cap is reached."""
        limit = self._settings.max_concurrent(agent)
        if not limit:
            return False
        count = self._in_flight.get(agent, 0)
        if count >= limit:
            raise AtCapacityError(limit)
        self._in_flight[agent] = count + 1
        return True

    def leave(self, agent: str) -> None:
        count = self._in_flight.get(agent, 0) - 1
        if count > 0:
            self._in_flight[agent] = count
        else:
            self._in_flight.pop(agent, None)

    def in_flight(self, agent: str) -> int:
        return self._in_flight.get(agent, 0)
