"""Where the edges find the process's runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from litestar import Request

if TYPE_CHECKING:
    from broker.runtime import BrokerRuntime


def runtime_of(request: Request[object, object, object]) -> BrokerRuntime:
    return cast("BrokerRuntime", request.app.state.runtime)
