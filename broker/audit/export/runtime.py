"""SIEM exporters a broker process runs beside the hot path ([audit.export] in the config)."""

from __future__ import annotations

import logging
import os

from broker.audit.export import (
    Exporter,
    FilePositionStore,
    HecSink,
    JsonLinesSink,
    PositionStore,
    RedisPositionStore,
    Sink,
    SyslogSink,
)
from broker.audit.log import AuditLog
from broker.background import BackgroundTasks
from broker.settings import AuditExportSinkSettings, Settings, SettingsError

log = logging.getLogger("a2a_broker.audit.export")


def build_sink(spec: AuditExportSinkSettings, settings: Settings) -> Sink:
    if spec.kind == "syslog":
        return SyslogSink(spec.host, spec.port, facility=spec.facility, name=spec.name)
    if spec.kind == "hec":
        token = os.environ.get(spec.token_env, "") if spec.token_env else ""
        if not token:
            raise SettingsError(f"[[audit.export.sinks]] {spec.name}: ${spec.token_env} is not set")
        return HecSink(spec.url, token, timeout_s=spec.timeout_s, name=spec.name)
    return JsonLinesSink(settings.path(spec.path), name=spec.name)


def start_exporters(
    settings: Settings, audit_log: AuditLog | None, tasks: BackgroundTasks | None = None
) -> list[Exporter]:
    """One started exporter per configured sink (none when export is off), run in ``tasks``."""
    export = settings.audit.export
    if not export.enabled or audit_log is None:
        return []
    positions: PositionStore
    if export.positions == "redis":
        key = f"{settings.store.key_prefix}:{export.positions_key}"
        positions = RedisPositionStore(settings.store, key)
    else:
        positions = FilePositionStore(settings.path(export.positions_path))
    exporters = []
    for spec in export.sinks:
        exporter = Exporter(
            audit_log,
            build_sink(spec, settings),
            positions,
            batch_size=spec.batch_size,
            max_backoff_s=spec.max_backoff_s,
            poll_interval_s=export.poll_interval_s,
            tasks=tasks,
        )
        exporter.start()
        exporters.append(exporter)
        log.info("exporting the audit log to %s (%s)", spec.name, spec.kind)
    return exporters
