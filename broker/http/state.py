"""Where the edges find the process's runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from litestar import Request
from litestar.datastructures import State

AnyRequest = Request[Any, Any, State]

if TYPE_CHECKING:
    from broker.runtime import BrokerRuntime


def runtime_of(request: AnyRequest) -> BrokerRuntime:
    return cast("BrokerRuntime", request.app.state.runtime)
