"""The error table: distinct, complete, and rendered the same way for both bindings."""

from __future__ import annotations

import msgspec
import pytest
from a2a.utils.errors import A2A_ERROR_MAPPING, JSON_RPC_ERROR_CODE_MAP

from broker.errors import ERROR_DOMAIN_A2A, ERROR_DOMAIN_BROKER, BrokerError, all_error_types
from broker.protocols.a2a.wire import error_reply, sse_error_event

ERRORS = all_error_types()
# JSON-RPC's own codes: several broker reasons may share one (BATCH_NOT_SUPPORTED, ...).
JSONRPC_STANDARD_CODES = {-32700, -32600, -32601, -32602, -32603}
# (code, reason) of every error the A2A specification defines, from the a2a-sdk's tables.
SPEC_ERRORS = {
    (JSON_RPC_ERROR_CODE_MAP[cls], mapping.reason)
    for cls, mapping in A2A_ERROR_MAPPING.items()
    if cls in JSON_RPC_ERROR_CODE_MAP
}


def test_reasons_are_unique() -> None:
    reasons = [e.reason for e in ERRORS]
    assert len(reasons) == len(set(reasons))


def test_broker_codes_are_unique_and_in_the_server_range() -> None:
    codes = [
        e.code
        for e in ERRORS
        if e.domain == ERROR_DOMAIN_BROKER and e.code not in JSONRPC_STANDARD_CODES
    ]
    assert len(codes) == len(set(codes))
    assert all(-32119 <= c <= -32000 for c in codes)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.reason)
def test_the_domain_names_who_defines_the_reason(cls: type[BrokerError]) -> None:
    """a2a-protocol.org exactly for the spec's own (code, reason) pairs; a2a-broker otherwise."""
    spec = (cls.code, cls.reason) in SPEC_ERRORS
    assert cls.domain == (ERROR_DOMAIN_A2A if spec else ERROR_DOMAIN_BROKER)
    for binding in ("jsonrpc", "rest"):
        body = msgspec.json.decode(error_reply(cls(), binding, None).body)  # type: ignore[arg-type]
        details = body["error"].get("data") or body["error"]["details"]
        assert details[0]["domain"] == cls.domain


def test_spec_errors_carry_the_specs_rest_status() -> None:
    from broker.errors import PushNotificationNotSupportedError

    body = msgspec.json.decode(error_reply(PushNotificationNotSupportedError(), "rest", None).body)
    assert body["error"]["code"] == 400 and body["error"]["status"] == "FAILED_PRECONDITION"


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.reason)
def test_jsonrpc_shape(cls: type[BrokerError]) -> None:
    reply = error_reply(cls(), "jsonrpc", msgspec.Raw(b'"req-1"'))
    body = msgspec.json.decode(reply.body)
    assert body["jsonrpc"] == "2.0" and body["id"] == "req-1"
    assert body["error"]["code"] == cls.code
    assert body["error"]["data"][0]["reason"] == cls.reason
    assert reply.status == (cls.http_status if cls.transport_level else 200)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.reason)
def test_rest_shape(cls: type[BrokerError]) -> None:
    reply = error_reply(cls(), "rest", None)
    body = msgspec.json.decode(reply.body)
    assert reply.status == cls.http_status == body["error"]["code"]
    assert body["error"]["details"][0]["reason"] == cls.reason
    assert body["error"]["status"] != "UNKNOWN"


def test_detail_never_reaches_the_wire() -> None:
    err = BrokerError("safe", detail="Traceback: secret internals")
    for binding in ("jsonrpc", "rest"):
        assert b"secret" not in error_reply(err, binding, None).body  # type: ignore[arg-type]
        assert b"secret" not in sse_error_event(err, binding, None)  # type: ignore[arg-type]


def test_field_errors_become_bad_request_details() -> None:
    err = BrokerError(data={"errors": [{"field": "skills", "message": "required"}]})
    body = msgspec.json.decode(error_reply(err, "rest", None).body)
    assert body["error"]["details"][1]["fieldViolations"] == [
        {"field": "skills", "description": "required"}
    ]


def test_error_reference_lists_every_reason() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "errors.md").read_text()
    missing = [e.reason for e in ERRORS if f"`{e.reason}`" not in doc]
    assert not missing, f"docs/errors.md lacks {missing}"
