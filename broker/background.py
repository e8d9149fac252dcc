"""The broker's background tasks, owned in one place (docs/decisions/0027).

Every long-lived task (a control channel, the policy poll, the kill-switch poll, the audit
checkpoints and exporters, the late-writes loop, the reservation expiry) and every
fire-and-forget task is spawned into one ``BackgroundTasks``, which the runtime owns: on
shutdown, ``close`` cancels what is still running and waits for all of it, in one place.

Unlike an ``asyncio.TaskGroup``, one task that fails does not cancel the others: it is logged
(one line, with the exception) and forgotten, and the broker goes on serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

log = logging.getLogger("a2a_broker.background")


class BackgroundTasks:
    """A set of tasks spawned with ``spawn`` and ended together with ``close``."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        """``close`` has begun: nothing more can be spawned."""
        return self._closed

    def __len__(self) -> int:
        """Tasks still running."""
        return len(self._tasks)

    def spawn(
        self,
        work: Coroutine[Any, Any, Any],
        name: str,
        on_failure: Callable[[BaseException], object] | None = None,
    ) -> asyncio.Task[Any]:
        """Run ``work`` as a task of the running loop; its failure is logged (one line), or
        handed to ``on_failure`` for work whose failure is expected and said otherwise.

        Raises ``RuntimeError`` (and closes ``work`` unstarted) once ``close`` has begun, or
        when no event loop runs."""
        if self._closed:
            work.close()
            raise RuntimeError("background tasks are closed")
        try:
            task = asyncio.get_running_loop().create_task(work, name=name)
        except RuntimeError:  # no event loop runs
            work.close()
            raise
        self._tasks.add(task)
        task.add_done_callback(partial(self._done, on_failure))
        return task

    async def close(self) -> None:
        """Cancel every task still running and wait until each has ended (idempotent)."""
        self._closed = True
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)

    def _done(
        self, on_failure: Callable[[BaseException], object] | None, task: asyncio.Task[Any]
    ) -> None:
        self._tasks.discard(task)
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if on_failure is not None:
            on_failure(exc)
        else:
            log.error("background task %s crashed: %r", task.get_name(), exc)
