"""What the audit records of an MCP call hold about it: never the tool's arguments themselves.

The audit stage of the shared pipeline writes one record per call. For MCP it takes these
fields: the method and what it acts on (as policy judged it), and of the arguments only a
digest (SHA-256 of their canonical JSON: sorted keys, no spaces) and their top-level names, so an
investigator can tell two calls with the same arguments apart from two without holding any
argument's value. A redacted copy, when ``[audit] payload_agents`` asks for one, is the audit
stage's business (``broker.audit_redact``), the same as for A2A.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from broker.mcp.reading import McpMessage

_canonical = msgspec.json.Encoder(order="sorted")
_ARGUMENT_MEMBERS = {"tools/call": "arguments", "prompts/get": "arguments"}


def audit_fields(message: McpMessage) -> dict[str, Any]:
    """The audit view of one request or notification (empty for a response)."""
    op = message.operation
    if op is None:
        return {}
    fields: dict[str, Any] = {"mcp_method": op.method, "mcp_kind": op.kind}
    if op.name:
        fields["mcp_name"] = op.name
    member = _ARGUMENT_MEMBERS.get(op.method)
    arguments = (message.params or {}).get(member) if member else None
    if isinstance(arguments, dict):
        digest = hashlib.sha256(_canonical.encode(arguments)).hexdigest()
        fields["arguments_sha256"] = digest
        fields["argument_names"] = sorted(arguments)[:64]
    return fields
