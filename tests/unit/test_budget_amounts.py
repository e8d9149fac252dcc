"""The amounts a budget call may carry: ``Usage.amounts`` and ``check_usage``."""

from __future__ import annotations

from typing import Any

import pytest

from broker.budgets.model import MAX_AMOUNT, METRICS, Usage, check_usage


def test_amounts_follow_the_order_of_metrics() -> None:
    usage = Usage(calls=1, tokens_in=2, tokens_out=3, cost_micro=4)
    assert usage.amounts() == tuple(usage.of(metric) for metric in METRICS) == (1, 2, 3, 4)


def test_usable_amounts_pass() -> None:
    check_usage(Usage())
    check_usage(Usage(calls=MAX_AMOUNT, tokens_in=1, tokens_out=MAX_AMOUNT, cost_micro=0))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("value", [-1, MAX_AMOUNT + 1, 1.0, "1", None])
def test_an_unusable_amount_is_refused_by_its_metric(metric: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"^{metric} must be an integer"):
        check_usage(Usage(**{metric: value}))


def test_the_first_unusable_amount_is_named() -> None:
    with pytest.raises(ValueError, match=r"^tokens_in "):
        check_usage(Usage(tokens_in=-1, cost_micro=-1))
