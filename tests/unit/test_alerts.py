"""The alert rules and their delivery, on the memory store with a clock the test moves.

The store scripts are covered against every backend in tests/contract/test_alert_state.py and
the rules end to end in tests/e2e/test_alerts.py; here: the arithmetic of the budget burn, the
batching, the card keys read off a stored card, and the webhook's signature and retries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import msgspec

from broker.alerts.rules import Batch
from broker.alerts.service import Alerts
from broker.alerts.webhook import AlertWebhook
from broker.audit.recorder import AuditRecorder
from broker.background import BackgroundTasks
from broker.errors import PolicyDeniedError, UpstreamConnectTimeoutError
from broker.identity.cards import card_key_ids
from broker.observability.record import RequestSeen
from broker.outbound.fake import FakeRequest, FakeResponse, FakeTransport
from broker.outbound.webhook import SIGNATURE_HEADER
from broker.settings_observability import AlertSettings
from broker.stores.alert_base import Alert
from broker.stores.budget_base import BudgetStatus
from broker.stores.memory_alerts import MemoryAlertState

HOUR = 3600


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _alerts(clock: Clock, **settings: object) -> Alerts:
    return Alerts(
        msgspec.convert(settings, AlertSettings), MemoryAlertState(clock), AuditRecorder(None),
        clock=clock,
    )  # fmt: skip


def _status(used: int, start: int, limit: int = 100) -> BudgetStatus:
    return BudgetStatus(
        scope="agent:spender", metric="calls", window="hour", limit=limit, used=used,
        reserved=0, remaining=limit - used, window_start=start,
    )  # fmt: skip


async def test_a_budget_fires_once_per_window_when_spent_faster_than_its_pace() -> None:
    start = 1_800_000_000 // HOUR * HOUR
    clock = Clock(start + HOUR / 2)  # half the hour gone
    alerts = _alerts(clock, budget_burn_factor=1.5, budget_burn_min_share=0.2)
    assert await alerts._burn(_status(70, start)) is None  # 70 % at half time: 1.4x the pace
    fired = await alerts._burn(_status(80, start))  # 1.6x the pace
    assert fired is not None and fired.rule == "budget_burn" and fired.detail["used"] == 80
    assert await alerts._burn(_status(90, start)) is None  # once per window
    clock.now = start + HOUR + 60  # the next hour: a new window may fire again
    assert await alerts._burn(_status(50, start + HOUR)) is not None


async def test_a_budget_below_its_minimum_share_or_without_a_window_never_fires() -> None:
    start = 1_800_000_000 // HOUR * HOUR
    alerts = _alerts(Clock(start + 10), budget_burn_factor=1.0, budget_burn_min_share=0.5)
    assert await alerts._burn(_status(40, start)) is None  # fast, but only 40 % spent
    lifetime = msgspec.structs.replace(_status(99, 0), window="lifetime")
    assert await alerts._burn(lifetime) is None


def _seen(caller: str, target: str, depth: int = 1, reason: str = "") -> RequestSeen:
    outcome = "refused" if reason else "ok"
    return RequestSeen("r", caller, target, "SendMessage", "jsonrpc", outcome, reason, 200, 0.01,
                       "", depth)  # fmt: skip


def test_a_batch_sums_calls_per_edge_and_depth_and_refusals_per_caller() -> None:
    denied = PolicyDeniedError.reason
    batch = Batch.of([
        _seen("a", "b"), _seen("a", "b"), _seen("a", "b", depth=2), _seen("-", "b"),
        _seen("m", "b", reason=denied), _seen("m", "c", reason=denied),
        _seen("a", "-"),
    ])  # fmt: skip
    assert batch.edges == {("a", "b", 1): 2, ("a", "b", 2): 1}
    assert batch.denials == {"m": 2} and batch.guards == {}


async def test_a_batch_raises_the_first_use_of_an_edge_and_of_a_model_once() -> None:
    alerts = _alerts(Clock(1_800_000_000.0))
    for _ in range(3):
        alerts.observe(_seen("a", "model:m1"))
    raised = await alerts.drain()
    assert sorted((a.rule, a.subject) for a in raised) == [
        ("new_edge", "a>model:m1"), ("new_model", "model:m1"),
    ]
    alerts.observe(_seen("b", "model:m1"))
    assert [(a.rule, a.subject) for a in await alerts.drain()] == [("new_edge", "b>model:m1")]
    assert await alerts.drain() == []


def _protected(kid: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"kid": kid}).encode()).rstrip(b"=").decode()


def test_the_key_ids_of_a_stored_card() -> None:
    card = {"name": "z", "signatures": [{"protected": _protected("k1")}, {"protected": "%%"},
                                        {"protected": _protected("k2")}]}  # fmt: skip
    assert card_key_ids(json.dumps(card)) == ["k1", "k2"]
    assert card_key_ids(json.dumps({"name": "z"})) == [] == card_key_ids("not json")


ALERT = Alert(id="a1", rule="new_edge", subject="a>b", at=1.0, summary="s")


async def test_the_webhook_signs_its_body_and_retries_until_accepted() -> None:
    answers = [FakeResponse(503), FakeResponse(429), FakeResponse(204)]

    async def handler(_: FakeRequest) -> FakeResponse:
        return answers.pop(0)

    transport = FakeTransport(handler)
    webhook = AlertWebhook(transport, "http://127.0.0.1:9/hook", b"key", BackgroundTasks(),
                           retries=3, first_pause_s=0.001)  # fmt: skip
    assert await webhook.deliver(ALERT)
    assert len(transport.sent) == 3
    sent = transport.sent[-1]
    assert sent.body is not None and json.loads(sent.body)["id"] == "a1"
    stamp, _, mac = sent.headers[SIGNATURE_HEADER].partition(",v1=")
    signed = stamp.removeprefix("t=").encode() + b"." + sent.body
    assert mac == hmac.new(b"key", signed, hashlib.sha256).hexdigest()


async def test_the_webhook_gives_up_on_a_client_error_and_after_its_retries() -> None:
    transport = FakeTransport(lambda _: _answer(FakeResponse(400)))
    webhook = AlertWebhook(transport, "http://127.0.0.1:9/hook", b"key", BackgroundTasks(),
                           retries=3, first_pause_s=0.001)  # fmt: skip
    assert not await webhook.deliver(ALERT)
    assert len(transport.sent) == 1  # a 400 is not retried

    async def unreachable(_: FakeRequest) -> FakeResponse:
        raise UpstreamConnectTimeoutError()

    transport = FakeTransport(unreachable)
    webhook = AlertWebhook(transport, "http://127.0.0.1:9/hook", b"key", BackgroundTasks(),
                           retries=2, first_pause_s=0.001)  # fmt: skip
    assert not await webhook.deliver(ALERT)
    assert len(transport.sent) == 3  # the first attempt and two retries


async def _answer(response: FakeResponse) -> FakeResponse:
    return response


def test_a_webhook_needs_its_key_and_a_url_the_egress_policy_allows() -> None:
    import pytest

    from broker.alerts.service import open_alerts
    from broker.settings import EgressSettings, SettingsError

    tasks, audit, state = BackgroundTasks(), AuditRecorder(None), MemoryAlertState()
    loopback = FakeTransport(lambda _: _answer(FakeResponse(204)))
    strict = FakeTransport(loopback._handler, EgressSettings(allow_loopback=False))
    hooked = AlertSettings(webhook_url="http://127.0.0.1:9/hook", webhook_key_env="HOOK_KEY")
    with pytest.raises(SettingsError, match="webhook_key_env"):
        open_alerts(hooked, state, audit, loopback, tasks, environ={})
    with pytest.raises(SettingsError, match="webhook_url"):
        open_alerts(hooked, state, audit, strict, tasks, environ={"HOOK_KEY": "k"})
    assert open_alerts(hooked, state, audit, loopback, tasks, environ={"HOOK_KEY": "k"})
    off = AlertSettings(enabled=False)
    assert open_alerts(off, state, audit, loopback, tasks, environ={}) is None
