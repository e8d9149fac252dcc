"""Audit records as OCSF 1.1.0 API Activity events: required fields, types, mapping, no secrets."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from broker.audit.export.ocsf import export_item, to_ocsf
from broker.audit.records import AuditRecord, build_record, with_hash

TS_US = 1_767_225_600_123_456  # 2026-01-01T00:00:00.123456Z


def record(**fields: Any) -> AuditRecord:
    base = {"seq": 7, "ts_us": TS_US, "replica": "r1", "kind": "request"}
    return with_hash(build_record({**base, **fields}))


REQUEST = record(
    request_id="req-1",
    caller="planner",
    chain=("root-agent", "planner"),
    tree="task-root",
    target="weather",
    operation="SendMessage",
    skill="forecast",
    decision="allow",
    rule="p, planner, weather, SendMessage",
    status=200,
    latency_us=12_345,
    tokens_in=10,
    tokens_out=20,
    cost_micro=300,
    request_digest="sha256:aa",
    response_digest="sha256:bb",
    detail={"task_id": "t-1"},
)
DENY = record(
    caller="intruder",
    target="payments",
    operation="CancelTask",
    decision="deny",
    reason="policy_denied",
    rule="deny-all",
    status=403,
)
AUTH_FAILURE = record(
    kind="auth.failure",
    reason="invalid_credential",
    status=401,
    operation="SendMessage",
    detail={"client_ip": "127.0.0.1", "authorization": "Bearer s3cr3t-value"},
)
REGISTRY_CHANGE = record(
    kind="registry.change", caller="admin", target="weather", operation="deregister"
)

# Attribute path -> type, for attributes OCSF requires of every API Activity event (base event,
# class, and the required members of the objects used).
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "activity_id": int,
    "category_uid": int,
    "class_uid": int,
    "type_uid": int,
    "time": int,
    "severity_id": int,
    "metadata.version": str,
    "metadata.product.name": str,
    "metadata.product.vendor_name": str,
    "actor": dict,
    "api.operation": str,
    "src_endpoint": dict,
}


def at(event: dict[str, Any], path: str) -> Any:
    value: Any = event
    for part in path.split("."):
        value = value[part]
    return value


@pytest.mark.parametrize("rec", [REQUEST, DENY, AUTH_FAILURE, REGISTRY_CHANGE])
def test_every_event_has_the_required_attributes_with_their_types(rec: AuditRecord) -> None:
    event = to_ocsf(rec)
    for path, kind in REQUIRED.items():
        assert isinstance(at(event, path), kind), path
    assert event["class_uid"] == 6003
    assert event["category_uid"] == 6
    assert event["type_uid"] == 6003 * 100 + event["activity_id"]
    assert event["time"] == TS_US // 1000
    assert event["metadata"]["version"] == "1.1.0"
    assert event["metadata"]["uid"] == rec.hash
    assert event["metadata"]["sequence"] == rec.seq
    assert event["metadata"]["log_name"] == "r1"
    assert event["status_id"] in (1, 2)
    assert event["severity_id"] in (1, 2, 3, 4)
    # The actor's "at least one of" constraint holds.
    assert event["actor"]["app_name"] == "a2a-broker"


def test_a_forwarded_request_maps_actor_api_endpoints_and_the_rest_to_unmapped() -> None:
    event = to_ocsf(REQUEST)
    assert (event["activity_id"], event["activity_name"]) == (1, "Create")
    assert (event["status_id"], event["status"], event["status_code"]) == (1, "Success", "200")
    assert event["severity_id"] == 1
    assert event["duration"] == 12
    assert event["actor"]["user"] == {"name": "planner", "uid": "planner"}
    assert event["actor"]["invoked_by"] == "root-agent"
    assert event["actor"]["authorizations"] == [
        {"decision": "allow", "policy": {"name": REQUEST.rule, "uid": REQUEST.rule}}
    ]
    assert event["api"] == {
        "operation": "SendMessage",
        "service": {"name": "weather"},
        "request": {"uid": "req-1"},
        "response": {"code": 200},
    }
    assert event["src_endpoint"] == {"name": "planner"}
    assert event["dst_endpoint"]["name"] == "weather"
    assert event["metadata"]["correlation_uid"] == "task-root"
    unmapped = event["unmapped"]
    assert unmapped["chain"] == ["root-agent", "planner"]
    assert unmapped["tokens"] == {"in": 10, "out": 20}
    assert unmapped["cost_micro"] == 300
    assert unmapped["digests"] == {"request": "sha256:aa", "response": "sha256:bb"}
    assert (unmapped["skill"], unmapped["kind"], unmapped["tree"]) == (
        "forecast",
        "request",
        "task-root",
    )
    assert unmapped["detail"] == {"task_id": "t-1"}


def test_a_denial_is_a_failure_of_medium_severity_naming_the_rule_and_reason() -> None:
    event = to_ocsf(DENY)
    assert (event["activity_id"], event["status_id"], event["severity_id"]) == (3, 2, 3)
    assert event["status_detail"] == "policy_denied"
    assert event["api"]["response"] == {"code": 403, "error": "policy_denied"}
    assert event["actor"]["authorizations"][0] == {
        "decision": "deny",
        "policy": {"name": "deny-all", "uid": "deny-all"},
    }


def test_an_authentication_failure_is_high_severity_from_an_unauthenticated_source() -> None:
    event = to_ocsf(AUTH_FAILURE)
    assert (event["status_id"], event["severity_id"], event["severity"]) == (2, 4, "High")
    assert "user" not in event["actor"]
    assert event["src_endpoint"] == {"name": "unauthenticated", "ip": "127.0.0.1"}


def test_a_registry_change_is_classified_by_its_verb() -> None:
    event = to_ocsf(REGISTRY_CHANGE)
    assert (event["activity_id"], event["type_name"]) == (4, "API Activity: Delete")
    assert event["status_id"] == 1
    no_operation = to_ocsf(record(kind="registry.change", caller="admin"))
    assert no_operation["activity_id"] == 3
    assert no_operation["api"]["operation"] == "registry.change"


@pytest.mark.parametrize(
    ("operation", "activity_id"),
    [
        ("GetTask", 2),
        ("ListTasks", 2),
        ("SubscribeToTask", 2),
        ("CancelTask", 3),
        ("CreateTaskPushNotificationConfig", 1),
        ("DeleteTaskPushNotificationConfig", 4),
        ("SetAgentStatus", 3),
        ("registry.register", 1),
        ("budget_reserve", 1),
        ("frobnicate", 99),
    ],
)
def test_activity_follows_the_operation(operation: str, activity_id: int) -> None:
    event = to_ocsf(record(kind="other", operation=operation))
    assert event["activity_id"] == activity_id
    assert event["type_uid"] == 600300 + activity_id


def test_no_secret_in_detail_reaches_the_event() -> None:
    jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    rec = record(
        detail={
            "authorization": "Bearer s3cr3t-value",
            "hop.token": "opaque-hop-token",
            "note": jwt,
            "api_key": "k-123",
            "tokens_used": 5,
        }
    )
    encoded = bytes(export_item(rec).event_json)
    for secret in (b"s3cr3t-value", b"opaque-hop-token", jwt.encode(), b"k-123"):
        assert secret not in encoded
    detail = to_ocsf(rec)["unmapped"]["detail"]
    assert detail["tokens_used"] == 5  # a count of LLM tokens is not a credential
    assert detail["authorization"] == "[redacted]"


def test_the_export_item_carries_the_record_identity_and_the_encoded_event() -> None:
    item = export_item(REQUEST)
    assert (item.replica, item.seq, item.kind, item.hash) == ("r1", 7, "request", REQUEST.hash)
    assert item.ts_us == TS_US
    assert msgspec.json.decode(item.event_json) == item.event
    assert item.severity_id == item.event["severity_id"]


def test_an_alert_is_a_created_event_of_medium_severity_and_its_acknowledgement_an_update() -> None:
    alert = to_ocsf(record(kind="alert", caller="mallory", reason="denial_burst",
                           detail={"alert.id": "a1", "alert.count": 10}))  # fmt: skip
    assert (alert["activity_id"], alert["severity_id"]) == (1, 3)
    ack = to_ocsf(record(kind="alert.ack", caller="admin", detail={"alert_id": "a1"}))
    assert ack["activity_id"] == 3
