"""Sensitive data controls: detect personal data and secrets, act on them by policy (allow,
tag, redact, pseudonymize, block), and carry what was found along a chain as tags.

A self-contained library, meant to be one stage of the request pipeline: ``DataControls`` is
built once from ``[datacontrols]`` and called per payload. docs/datacontrols.md documents the
recognizers, the actions, the policy syntax, the streaming window and what is not detected.
"""

from broker.datacontrols.controls import DataControls, Inspection, TextStream, open_controls
from broker.datacontrols.detector import Detector, DetectorOptions
from broker.datacontrols.findings import Finding
from broker.datacontrols.policy import DataPolicy, Subject
from broker.datacontrols.redact import Placeholders
from broker.datacontrols.stream import StreamScanner
from broker.datacontrols.tags import accumulate
from broker.settings_datacontrols import DataControlsSettings, DataRule, FlowRule

__all__ = [
    "DataControls",
    "DataControlsSettings",
    "DataPolicy",
    "DataRule",
    "Detector",
    "DetectorOptions",
    "Finding",
    "FlowRule",
    "Inspection",
    "Placeholders",
    "StreamScanner",
    "Subject",
    "TextStream",
    "accumulate",
    "open_controls",
]
