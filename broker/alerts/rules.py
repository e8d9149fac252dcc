"""The alert rules over a batch of finished requests (``[alerts]``; docs/observability.md).

A batch is what one process saw in the last fraction of a second: calls are summed per edge
and refusals per caller, so the store is asked once per edge and caller, not once per request.
Each store operation is atomic and says itself whether a threshold was just crossed, so an
alert fires once even when every replica sees the same edge at the same moment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from broker.observability.record import GUARD_REASONS, NOBODY, POLICY_DENIALS, RequestSeen
from broker.settings_observability import AlertSettings
from broker.stores.alert_base import AlertState, EdgeRules

MODEL_PREFIX = "model:"
RULES = (
    "new_edge", "new_model", "call_rate", "denial_burst", "guard_burst", "budget_burn",
    "deep_chain", "new_card_key",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Finding:
    """An alert to raise: its rule, what it is about, a sentence, and the figures."""

    rule: str
    subject: str
    summary: str
    caller: str = ""
    target: str = ""
    detail: dict[str, str | int] = field(default_factory=dict)


@dataclass(slots=True)
class Batch:
    """Requests summed: calls per edge and chain depth (allowed ones; the depths are judged
    shallowest first, so a batch's usual calls count before its deeper one), refusals per
    caller and kind."""

    edges: dict[tuple[str, str, int], int] = field(default_factory=dict)
    denials: dict[str, int] = field(default_factory=dict)
    guards: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, requests: Sequence[RequestSeen]) -> Batch:
        batch = cls()
        for seen in requests:
            if seen.caller == NOBODY:
                continue  # not authenticated: not an edge, nor anyone's denial
            if seen.reason in POLICY_DENIALS:
                batch.denials[seen.caller] = batch.denials.get(seen.caller, 0) + 1
            elif seen.reason in GUARD_REASONS:
                batch.guards[seen.caller] = batch.guards.get(seen.caller, 0) + 1
            if seen.outcome == "refused" or seen.target == NOBODY:
                continue
            key = (seen.caller, seen.target, seen.depth)
            batch.edges[key] = batch.edges.get(key, 0) + 1
        return batch


class AlertRules:
    def __init__(self, settings: AlertSettings, state: AlertState) -> None:
        self._settings = settings
        self._state = state
        self._edge_rules = EdgeRules(
            bucket_s=settings.rate_bucket_s,
            smoothing=settings.rate_smoothing,
            rate_factor=settings.rate_factor,
            rate_min_calls=settings.rate_min_calls,
            rate_warmup_buckets=settings.rate_warmup_buckets,
            depth_warmup_calls=settings.depth_warmup_calls,
            ttl_s=settings.state_ttl_s,
        )
        # A model's own history only answers "first use"; its rate is judged per edge.
        self._model_rules = self._edge_rules._replace(rate_factor=0.0, depth_warmup_calls=0)

    async def judge(self, batch: Batch) -> list[Finding]:
        """What ``batch`` reveals. Raises ``StoreUnavailableError`` if the store cannot say."""
        found: list[Finding] = []
        models: set[str] = set()
        for (caller, target, depth), calls in sorted(batch.edges.items()):
            found += await self._edge(caller, target, calls, depth)
            if target.startswith(MODEL_PREFIX):
                models.add(target)
        if self._settings.new_model:
            for model in sorted(models):
                first = await self._state.observe_edge(model, 1, 0, self._model_rules)
                if first.first:
                    found.append(Finding("new_model", model, f"{model} used for the first time",
                                         target=model))  # fmt: skip
        found += await self._bursts("denial_burst", batch.denials, self._settings.denial_burst)
        found += await self._bursts("guard_burst", batch.guards, self._settings.guard_burst)
        return found

    async def _edge(self, caller: str, target: str, calls: int, depth: int) -> list[Finding]:
        subject = f"{caller}>{target}"
        seen = await self._state.observe_edge(subject, calls, depth, self._edge_rules)
        found = []
        if seen.first and self._settings.new_edge:
            found.append(Finding("new_edge", subject, f"{caller} called {target} for the first "
                                 "time", caller, target))  # fmt: skip
        if seen.rate:
            summary = (f"{caller} -> {target}: {seen.rate} calls in {self._edge_rules.bucket_s}s, "
                       f"usually {seen.baseline:.1f}")  # fmt: skip
            detail: dict[str, str | int] = {"calls": seen.rate, "baseline": f"{seen.baseline:.2f}",
                                            "bucket_s": self._edge_rules.bucket_s}  # fmt: skip
            found.append(Finding("call_rate", subject, summary, caller, target, detail))
        if seen.deeper:
            summary = f"{caller} -> {target}: a chain of {seen.deeper} hops, usually {seen.usual}"
            detail = {"depth": seen.deeper, "usual": seen.usual}
            found.append(Finding("deep_chain", subject, summary, caller, target, detail))
        return found

    async def _bursts(self, rule: str, counts: dict[str, int], threshold: int) -> list[Finding]:
        if threshold <= 0:
            return []
        window = self._settings.burst_window_s
        found = []
        what = "policy denials" if rule == "denial_burst" else "guard refusals"
        for caller, amount in sorted(counts.items()):
            reached = await self._state.count_burst(f"{rule}:{caller}", amount, window, threshold)
            if reached:
                summary = f"{caller}: {reached} {what} within {window}s"
                detail: dict[str, str | int] = {"count": reached, "window_s": window}
                found.append(Finding(rule, caller, summary, caller, "", detail))
        return found
