"""What the Litestar application needs for the console: its routes, its templates, and its
session store opened and closed with the app."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from litestar import Litestar
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig
from litestar.types import ControllerRouterHandler

from broker.console.sessions import Sessions
from broker.console.views import HERE, console_router
from broker.observability import record
from broker.settings import Settings


@dataclass(slots=True)
class ConsoleParts:
    route_handlers: Sequence[ControllerRouterHandler] = ()
    template_config: TemplateConfig[Any] | None = None
    on_startup: list[Callable[[Litestar], Awaitable[None]]] = field(default_factory=list)
    on_shutdown: list[Callable[[Litestar], Awaitable[None]]] = field(default_factory=list)


def console_parts(settings: Settings) -> ConsoleParts:
    """Nothing at all when ``[console] enabled = false``."""
    if not settings.console.enabled:
        return ConsoleParts()
    record.keep_recent(settings.console.recent_requests)

    async def open_sessions(app: Litestar) -> None:
        try:
            app.state.console_sessions = Sessions.for_settings(settings)
        except Exception:  # the start-up report is quiet: the cause must be in the log
            logging.getLogger("a2a_broker").exception("cannot start: console sessions")
            raise

    async def close_sessions(app: Litestar) -> None:
        sessions = getattr(app.state, "console_sessions", None)
        if sessions is not None:
            await sessions.close()

    return ConsoleParts(
        route_handlers=[console_router()],
        template_config=TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine),
        on_startup=[open_sessions],
        on_shutdown=[close_sessions],
    )
