"""Audit records as OCSF 1.1.0 "API Activity" events (class 6003), and the item sinks receive.

One record becomes one event. Fields OCSF names are mapped to its attributes; the rest (chain,
tree, skill, rule, tokens, cost, digests, kind, detail) go to ``unmapped`` under their own names,
so nothing the record holds is lost. ``metadata.uid`` is the record's hash: the same record always
yields the same id, which lets a SIEM drop a batch re-sent after an exporter crash.

Records never hold secrets; ``detail`` is scrubbed again here (keys that name a credential,
values that look like a bearer token or a JWT) because it is free-form and leaves our control.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from broker import __version__
from broker.audit.records import AuditRecord

OCSF_VERSION: Final = "1.1.0"
PRODUCT_NAME: Final = "a2a-broker"
VENDOR_NAME: Final = "a2a-broker"
CLASS_UID: Final = 6003
CATEGORY_UID: Final = 6

ACTIVITY_UNKNOWN, ACTIVITY_CREATE, ACTIVITY_READ, ACTIVITY_UPDATE, ACTIVITY_DELETE = 0, 1, 2, 3, 4
ACTIVITY_OTHER: Final = 99
_ACTIVITY_NAMES: Final = {
    0: "Unknown",
    1: "Create",
    2: "Read",
    3: "Update",
    4: "Delete",
    99: "Other",
}

SEVERITY_INFORMATIONAL, SEVERITY_LOW, SEVERITY_MEDIUM, SEVERITY_HIGH = 1, 2, 3, 4
_SEVERITY_NAMES: Final = {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High"}

STATUS_SUCCESS, STATUS_FAILURE = 1, 2
_STATUS_NAMES: Final = {0: "Unknown", 1: "Success", 2: "Failure", 99: "Other"}

# A2A 1.0 operations by what they do to the task or resource they address.
_A2A_ACTIVITY: Final = {
    "SendMessage": ACTIVITY_CREATE,
    "SendStreamingMessage": ACTIVITY_CREATE,
    "CreateTaskPushNotificationConfig": ACTIVITY_CREATE,
    "GetTask": ACTIVITY_READ,
    "ListTasks": ACTIVITY_READ,
    "SubscribeToTask": ACTIVITY_READ,
    "GetTaskPushNotificationConfig": ACTIVITY_READ,
    "ListTaskPushNotificationConfigs": ACTIVITY_READ,
    "GetExtendedAgentCard": ACTIVITY_READ,
    "CancelTask": ACTIVITY_UPDATE,
    "DeleteTaskPushNotificationConfig": ACTIVITY_DELETE,
}
# Other operations (admin API, registry, keys) by the first word that is a known verb:
# "SetAgentStatus" -> set -> Update, "registry.deregister" -> deregister -> Delete.
_VERB_ACTIVITY: Final = {
    **dict.fromkeys(
        ("create", "register", "add", "mint", "issue", "reserve", "import"), ACTIVITY_CREATE
    ),
    **dict.fromkeys(("get", "list", "read", "search", "subscribe", "fetch"), ACTIVITY_READ),
    **dict.fromkeys(
        (
            "update",
            "set",
            "replace",
            "reload",
            "suspend",
            "resume",
            "kill",
            "cancel",
            "settle",
            "rotate",
            "approve",
            "reject",
            "enable",
            "disable",
            "patch",
            "put",
        ),
        ACTIVITY_UPDATE,
    ),
    **dict.fromkeys(
        ("delete", "remove", "deregister", "unregister", "revoke", "purge"), ACTIVITY_DELETE
    ),
}
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
# Records with no operation, by kind (the kinds of broker.audit.records.KINDS).
_KIND_ACTIVITY: Final = {
    "token.mint": ACTIVITY_CREATE,
    "registry.change": ACTIVITY_UPDATE,
    "policy.reload": ACTIVITY_UPDATE,
    "killswitch": ACTIVITY_UPDATE,
    "budget": ACTIVITY_UPDATE,
    "approval": ACTIVITY_UPDATE,
    "alert": ACTIVITY_CREATE,
    "alert.ack": ACTIVITY_UPDATE,
}
AUTH_FAILURE_KIND: Final = "auth.failure"
_FAILURE_KINDS: Final = frozenset({AUTH_FAILURE_KIND, "policy.error"})
# Kinds that matter to a security team even when nothing was denied.
_KIND_SEVERITY: Final = {
    AUTH_FAILURE_KIND: SEVERITY_HIGH,
    "killswitch": SEVERITY_MEDIUM,
    "policy.error": SEVERITY_MEDIUM,
    "alert": SEVERITY_MEDIUM,  # an anomaly the broker noticed (broker.alerts)
}

_SECRET_KEY = re.compile(
    r"authorization|passw|secret|credential|api[-_]?key|cookie|bearer|private|(^|[-_.])token$",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"^\s*(bearer|basic)\s+\S|^eyJ[\w-]+\.eyJ[\w-]+\.|-----BEGIN", re.IGNORECASE
)
REDACTED: Final = "[redacted]"


class ExportItem(msgspec.Struct, frozen=True, kw_only=True):
    """One record as sinks receive it: its identity, its OCSF event, and that event encoded once."""

    replica: str
    seq: int
    kind: str
    hash: str
    ts_us: int
    severity_id: int
    event: dict[str, Any]
    event_json: msgspec.Raw


_encoder = msgspec.json.Encoder()


def export_item(record: AuditRecord) -> ExportItem:
    """The item for ``record``; its ``event`` is ``to_ocsf(record)``."""
    event = to_ocsf(record)
    return ExportItem(
        replica=record.replica,
        seq=record.seq,
        kind=record.kind,
        hash=record.hash,
        ts_us=record.ts_us,
        severity_id=event["severity_id"],
        event=event,
        event_json=msgspec.Raw(_encoder.encode(event)),
    )


def to_ocsf(record: AuditRecord) -> dict[str, Any]:
    """The OCSF 1.1.0 API Activity event for ``record``: a JSON-ready dict, no secrets."""
    activity_id = activity_for(record.kind, record.operation)
    severity_id = severity_for(record)
    status_id = status_for(record)
    event: dict[str, Any] = {
        "class_uid": CLASS_UID,
        "class_name": "API Activity",
        "category_uid": CATEGORY_UID,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": _ACTIVITY_NAMES[activity_id],
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": f"API Activity: {_ACTIVITY_NAMES[activity_id]}",
        "time": record.ts_us // 1000,
        "severity_id": severity_id,
        "severity": _SEVERITY_NAMES[severity_id],
        "status_id": status_id,
        "status": _STATUS_NAMES[status_id],
        "message": _message(record),
        "actor": _actor(record),
        "api": _api(record, status_id),
        "src_endpoint": _src_endpoint(record),
        "metadata": _metadata(record),
        "unmapped": _unmapped(record),
    }
    if record.latency_us:
        event["duration"] = record.latency_us // 1000
    if record.status:
        event["status_code"] = str(record.status)
    if record.reason:
        event["status_detail"] = record.reason
    if record.target:
        event["dst_endpoint"] = {"name": record.target, "svc_name": record.target}
    return event


def activity_for(kind: str, operation: str) -> int:
    """OCSF activity_id: by A2A operation, else by the operation's verb, else by kind, else 99."""
    if operation in _A2A_ACTIVITY:
        return _A2A_ACTIVITY[operation]
    for word in _WORD.findall(operation):
        if (activity_id := _VERB_ACTIVITY.get(word.lower())) is not None:
            return activity_id
    return _KIND_ACTIVITY.get(kind, ACTIVITY_OTHER)


def severity_for(record: AuditRecord) -> int:
    """High for an authentication failure; Medium for a denial, a kill-switch action or a policy
    error; Low for a call that failed upstream; else Informational."""
    if record.kind in _KIND_SEVERITY:
        return _KIND_SEVERITY[record.kind]
    if record.decision == "deny":
        return SEVERITY_MEDIUM
    if record.status >= 400:
        return SEVERITY_LOW
    return SEVERITY_INFORMATIONAL


def status_for(record: AuditRecord) -> int:
    """Failure on a denial, an authentication failure, a policy error or an HTTP status >= 400.

    A record without decision or status states an action that happened (a registry change, a
    reload), so any other record counts as a success.
    """
    failed = record.decision == "deny" or record.kind in _FAILURE_KINDS
    return STATUS_FAILURE if failed or record.status >= 400 else STATUS_SUCCESS


def _message(record: AuditRecord) -> str:
    outcome = record.decision or (str(record.status) if record.status else "done")
    operation = record.operation or record.kind
    target = f" -> {record.target}" if record.target else ""
    return f"{record.caller or 'unauthenticated'} {operation}{target}: {outcome}"


def _actor(record: AuditRecord) -> dict[str, Any]:
    actor: dict[str, Any] = {"app_name": PRODUCT_NAME}
    if record.caller:
        actor["user"] = {"name": record.caller, "uid": record.caller}
    if record.chain:
        actor["invoked_by"] = record.chain[0]
    if record.decision:
        authorization: dict[str, Any] = {"decision": record.decision}
        if record.rule:
            authorization["policy"] = {"name": record.rule, "uid": record.rule}
        actor["authorizations"] = [authorization]
    return actor


def _api(record: AuditRecord, status_id: int) -> dict[str, Any]:
    api: dict[str, Any] = {"operation": record.operation or record.kind}
    if record.target:
        api["service"] = {"name": record.target}
    if record.request_id:
        api["request"] = {"uid": record.request_id}
    response: dict[str, Any] = {}
    if record.status:
        response["code"] = record.status
    if status_id == STATUS_FAILURE and record.reason:
        response["error"] = record.reason
    if response:
        api["response"] = response
    return api


def _src_endpoint(record: AuditRecord) -> dict[str, Any]:
    # Required by the class. The broker knows the caller's identity, not always its address.
    endpoint: dict[str, Any] = {"name": record.caller or "unauthenticated"}
    address = record.detail.get("client_ip")
    if isinstance(address, str) and address:
        endpoint["ip"] = address
    return endpoint


def _metadata(record: AuditRecord) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": {"name": PRODUCT_NAME, "vendor_name": VENDOR_NAME, "version": __version__},
        "uid": record.hash,
        "sequence": record.seq,
        "log_name": record.replica,
    }
    if record.tree:
        metadata["correlation_uid"] = record.tree
    return metadata


def _unmapped(record: AuditRecord) -> dict[str, Any]:
    return {
        "kind": record.kind,
        "chain": list(record.chain),
        "tree": record.tree,
        "skill": record.skill,
        "rule": record.rule,
        "tokens": {"in": record.tokens_in, "out": record.tokens_out},
        "cost_micro": record.cost_micro,
        "latency_us": record.latency_us,
        "digests": {"request": record.request_digest, "response": record.response_digest},
        "prev": record.prev,
        "detail": scrub(record.detail),
    }


def scrub(value: Any) -> Any:
    """``value`` with every credential-like key's value and token-like string replaced."""
    if isinstance(value, dict):
        return {
            key: REDACTED if _SECRET_KEY.search(str(key)) else scrub(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    if isinstance(value, str) and _SECRET_VALUE.search(value):
        return REDACTED
    return value
