"""SIEM export of the audit log: OCSF events to syslog, Splunk HEC or JSON lines, none lost.

``Exporter`` reads every replica chain of an ``AuditLog`` after the position saved for its sink,
maps each record to an OCSF 1.1.0 API Activity event (``ocsf.to_ocsf``) and moves the position
only once the sink acknowledged. See docs/siem.md.
"""

from broker.audit.export.errors import ExportError, PositionStoreError, SinkUnavailableError
from broker.audit.export.exporter import Exporter
from broker.audit.export.hec import HecSink
from broker.audit.export.ocsf import ExportItem, export_item, to_ocsf
from broker.audit.export.positions import FilePositionStore, PositionStore, RedisPositionStore
from broker.audit.export.sinks import JsonLinesSink, Sink
from broker.audit.export.syslog import SyslogSink

__all__ = [
    "ExportError",
    "ExportItem",
    "Exporter",
    "FilePositionStore",
    "HecSink",
    "JsonLinesSink",
    "PositionStore",
    "PositionStoreError",
    "RedisPositionStore",
    "Sink",
    "SinkUnavailableError",
    "SyslogSink",
    "export_item",
    "to_ocsf",
]
