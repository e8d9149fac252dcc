"""The approvals admin API: the queue, and decisions by named approvers.

``GET /admin/approvals`` (``?state=pending`` for the open ones) and ``GET /admin/approvals/{id}``
accept the admin token or an approver's token. ``POST /admin/approvals/{id}`` with
``{"decision": "approve" | "deny", "reason": "..."}`` takes an approver's own token (from
``[approvals.approvers]``): the token says who decides, and the admin token, which names no
person, decides nothing. The held call itself (its body) is never shown here; its digest is.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from litestar import Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath

from broker.approvals.desk import ApprovalDesk
from broker.errors import (
    AdminDisabledError,
    AdminUnauthenticatedError,
    ApprovalNotFoundError,
    ApproverNotAllowedError,
    InvalidAdminRequestError,
)
from broker.http.admin import admin_token_digest, token_matches
from broker.http.state import AnyRequest, runtime_of
from broker.stages.authenticate import bearer_token
from broker.stores.approvals_base import ApprovalRecord

_encoder = msgspec.json.Encoder()
MAX_REASON = 500


class DecisionBody(msgspec.Struct, forbid_unknown_fields=True):
    decision: Literal["approve", "deny"]
    reason: str = ""


def _desk(connection: ASGIConnection[Any, Any, Any, Any]) -> ApprovalDesk:
    desk: ApprovalDesk = connection.app.state.runtime.approvals
    return desk


def approvals_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """The admin token or an approver's token."""
    token = bearer_token(connection.headers.get("authorization"))
    expected = admin_token_digest(connection.app.state.runtime.settings)
    if token is not None and expected and token_matches(token, expected):
        return
    if token is not None and _desk(connection).approver(token) is not None:
        return
    if not expected and not _desk(connection).settings.approvers:
        raise AdminDisabledError
    raise AdminUnauthenticatedError


def show(record: ApprovalRecord) -> dict[str, Any]:
    """An approval as the API shows it."""
    return msgspec.to_builtins(record)  # type: ignore[no-any-return]


@get("/")
async def list_approvals(request: AnyRequest) -> Response[bytes]:
    records = await runtime_of(request).approvals.list()
    if wanted := request.query_params.get("state"):
        records = [r for r in records if r.state == wanted]
    return _json({"approvals": [show(r) for r in records]})


@get("/{approval_id:str}")
async def show_approval(request: AnyRequest, approval_id: FromPath[str]) -> Response[bytes]:
    record = await runtime_of(request).approvals.current(approval_id)
    if record is None:
        raise ApprovalNotFoundError
    return _json(show(record))


@post("/{approval_id:str}", status_code=200)
async def decide_approval(request: AnyRequest, approval_id: FromPath[str]) -> Response[bytes]:
    desk = runtime_of(request).approvals
    approver = desk.approver(bearer_token(request.headers.get("authorization")))
    if approver is None:
        await desk.refused_decision(approval_id, "not_an_approver")
        raise ApproverNotAllowedError(
            "Decide with an approver's own token ([approvals.approvers]): the admin token"
            " names no person."
        )
    body = decide_body(await request.body())
    record = await desk.decide(
        approval_id, approver, body.decision == "approve", body.reason[:MAX_REASON]
    )
    return _json(show(record))


def decide_body(raw: bytes) -> DecisionBody:
    try:
        return msgspec.json.decode(raw, type=DecisionBody)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidAdminRequestError(
            f"Invalid request body: {exc} (send {{\"decision\": \"approve\" | \"deny\","
            f" \"reason\": \"...\"}})"
        ) from None


def _json(payload: object) -> Response[bytes]:
    return Response(_encoder.encode(payload), status_code=200, media_type="application/json")


approvals_router = Router(
    path="/admin/approvals",
    guards=[approvals_guard],
    route_handlers=[list_approvals, show_approval, decide_approval],
)
