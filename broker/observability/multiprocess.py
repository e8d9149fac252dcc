"""Metrics shared by the worker processes of one ``a2a-broker serve`` (decision 0050).

prometheus-client keeps each process's values in memory-mapped files in the directory named by
``PROMETHEUS_MULTIPROC_DIR`` and reads it once, when it is first imported. ``serve`` therefore
names a fresh directory for each start before any worker (or this module's caller) imports it:
values of an earlier run never leak into this one, and the directory is removed at exit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from broker.settings_observability import MetricsSettings

ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextmanager
def metrics_directory(settings: MetricsSettings) -> Iterator[str | None]:
    """For the serve process: a fresh directory in $PROMETHEUS_MULTIPROC_DIR while it runs, and
    the separate metrics listener (``[metrics] port``) if one is configured."""
    if not settings.enabled:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="a2a-broker-metrics-")
    os.environ[ENV] = directory
    try:
        if settings.port:
            _listen(settings)
        yield directory
    finally:
        os.environ.pop(ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


def _listen(settings: MetricsSettings) -> None:
    from prometheus_client import start_http_server  # noqa: PLC0415 - after ENV is set

    from broker.observability.metrics import scrape_registry  # noqa: PLC0415

    start_http_server(settings.port, addr=settings.host, registry=scrape_registry())


def worker_stopped() -> None:
    """Drop this process's live gauges (open streams, breaker states) from the shared view."""
    from broker.observability.metrics import MULTIPROCESS  # noqa: PLC0415

    if MULTIPROCESS:
        from prometheus_client.multiprocess import mark_process_dead  # noqa: PLC0415

        mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
