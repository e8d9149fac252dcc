"""The admin API: registry administration, behind its own admin credential."""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any, TypeVar

import msgspec
from litestar import Response, Router, delete, get, post, put
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath

from broker.budgets.model import Limit
from broker.errors import (
    AdminDisabledError,
    AdminUnauthenticatedError,
    BrokerError,
    InvalidAdminRequestError,
)
from broker.http.admin_body import MAX_ADMIN_JSON_DEPTH as MAX_ADMIN_JSON_DEPTH  # noqa: PLC0414
from broker.http.admin_body import decode_body as _decode
from broker.http.admin_body import json_reply as _json
from broker.http.admin_mcp import MCP_SERVER_HANDLERS
from broker.http.state import AnyRequest, runtime_of
from broker.policy.rules import PolicyError
from broker.settings import BudgetLimitSettings, Settings
from broker.stages.authenticate import bearer_token
from broker.stores.budget_limits import check_override
from broker.stores.kill_switch import KillSwitchState

log = logging.getLogger("a2a_broker.admin")
_encoder = msgspec.json.Encoder()
_B = TypeVar("_B", bound=msgspec.Struct)


class _CardBody(msgspec.Struct, forbid_unknown_fields=True):
    card: dict[str, Any] | None = None
    card_url: str | None = None


class _RegisterBody(_CardBody, forbid_unknown_fields=True):
    name: str = ""


class _KillBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: str = ""


class _BudgetLimitsBody(msgspec.Struct, forbid_unknown_fields=True):
    # Same fields and checks as a [budgets] entry: unknown metric/window or a bad limit is a 400
    # whose message names the field (e.g. `$.limits[0].window`).
    limits: tuple[BudgetLimitSettings, ...]


async def _audit(request: AnyRequest, kind: str, action: str, agent: str) -> None:
    """One record per operator action, after it took effect (the change is already made)."""
    await runtime_of(request).audit.event(kind, "admin", action=action, agent=agent)


def admin_token_digest(settings: Settings) -> str:
    """SHA-256 hex of the admin token ("" when none is configured: admin is disabled)."""
    return settings.admin.token_sha256.lower() or (
        hashlib.sha256(settings.admin_token.encode()).hexdigest() if settings.admin_token else ""
    )


def token_matches(token: str, expected_sha256: str) -> bool:
    """Whether ``token`` hashes to ``expected_sha256`` (compared in constant time)."""
    actual = hashlib.sha256(token.encode()).hexdigest()
    return bool(expected_sha256) and hmac.compare_digest(actual, expected_sha256)


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Admin requests carry the admin token; the broker holds only its SHA-256 digest."""
    expected = admin_token_digest(connection.app.state.runtime.settings)
    if not expected:
        raise AdminDisabledError
    token = bearer_token(connection.headers.get("authorization"))
    if token is None:
        raise AdminUnauthenticatedError
    if not token_matches(token, expected):
        raise AdminUnauthenticatedError


@get("/agents")
async def list_agents(request: AnyRequest) -> Response[bytes]:
    directory = runtime_of(request).directory
    return _json({"agents": [directory.summary(r) for r in await directory.list()]})


async def _audit_refusal(request: AnyRequest, action: str, agent: str, err: BrokerError) -> None:
    """A refused registration or update is an audit record too (who tried what, and why)."""
    try:
        await runtime_of(request).audit.event(
            "registry.refused", "admin", action=action, agent=agent[:100], reason=err.reason
        )
    except BrokerError as audit_err:
        log.error("refused %s of %r not audited: %s", action, agent[:100], audit_err.reason)  # noqa: TRY400


@post("/agents")
async def register_agent(request: AnyRequest) -> Response[bytes]:
    name = ""
    try:
        body = _decode(await request.body(), _RegisterBody)
        name = body.name
        directory = runtime_of(request).directory
        record, credential = await directory.register(body.name, body.card, body.card_url)
    except BrokerError as err:
        await _audit_refusal(request, "register", name, err)
        raise
    await _audit(request, "registry.change", "register", record.name)
    await runtime_of(request).card_registered(record)
    return _json({"agent": directory.summary(record), "credential": credential}, 201)


@get("/agents/{name:str}")
async def show_agent(request: AnyRequest, name: FromPath[str]) -> Response[bytes]:
    directory = runtime_of(request).directory
    record = await directory.get(name)
    card = msgspec.json.decode(record.card_json)
    return _json({"agent": directory.summary(record), "card": card})


@put("/agents/{name:str}")
async def update_agent(request: AnyRequest, name: FromPath[str]) -> Response[bytes]:
    try:
        body = _decode(await request.body(), _CardBody)
        directory = runtime_of(request).directory
        record = await directory.update(name, body.card, body.card_url)
    except BrokerError as err:
        await _audit_refusal(request, "update", name, err)
        raise
    await _audit(request, "registry.change", "update", name)
    await runtime_of(request).card_registered(record)
    return _json({"agent": directory.summary(record)})


@post("/agents/{name:str}/suspend")
async def suspend_agent(request: AnyRequest, name: FromPath[str]) -> Response[bytes]:
    directory = runtime_of(request).directory
    record = await directory.suspend(name)
    await _audit(request, "killswitch", "agent.suspend", name)
    return _json({"agent": directory.summary(record)})


@post("/agents/{name:str}/resume")
async def resume_agent(request: AnyRequest, name: FromPath[str]) -> Response[bytes]:
    directory = runtime_of(request).directory
    record = await directory.resume(name)
    await _audit(request, "killswitch", "agent.resume", name)
    return _json({"agent": directory.summary(record)})


@post("/agents/{name:str}/credential")
async def rotate_credential(request: AnyRequest, name: FromPath[str]) -> Response[bytes]:
    credential = await runtime_of(request).directory.rotate_credential(name)
    await _audit(request, "registry.change", "credential.rotate", name)
    return _json({"agent": name, "credential": credential})


@delete("/agents/{name:str}", status_code=204)
async def delete_agent(request: AnyRequest, name: FromPath[str]) -> None:
    await runtime_of(request).directory.delete(name)
    await _audit(request, "registry.change", "delete", name)


@get("/trees/{tree:str}")
async def show_tree(request: AnyRequest, tree: FromPath[str]) -> Response[bytes]:
    return _json(await runtime_of(request).trees.show(tree))


@post("/trees/{tree:str}/kill")
async def kill_tree(request: AnyRequest, tree: FromPath[str]) -> Response[bytes]:
    """Refuse any further delegation in the tree (every replica) and cancel its running tasks."""
    return _json(await runtime_of(request).trees.kill(tree))


@get("/kill")
async def show_kill_switch(request: AnyRequest) -> Response[bytes]:
    """Whether the global kill switch is engaged (as this replica last read it)."""
    return _json(_kill_state(runtime_of(request).controls.kill.state))


@post("/kill")
async def engage_kill_switch(request: AnyRequest) -> Response[bytes]:
    """Refuse every new hop on every replica (KILL_SWITCH_ENGAGED) and end open streams.
    Body (optional): ``{"reason": "..."}``. Engaging it again keeps the first engagement."""
    raw = await request.body()
    body = _decode(raw, _KillBody) if raw.strip() else _KillBody()
    runtime = runtime_of(request)
    state, newly = await runtime.controls.kill.engage("admin", body.reason[:500])
    await runtime.audit.event(
        "killswitch", "admin", action="global.kill", reason=state.reason, newly=newly
    )
    return _json({**_kill_state(state), "newly_engaged": newly})


@delete("/kill", status_code=200)
async def lift_kill_switch(request: AnyRequest) -> Response[bytes]:
    """Lift the global kill switch on every replica: traffic flows again."""
    runtime = runtime_of(request)
    was = await runtime.controls.kill.lift()
    await runtime.audit.event("killswitch", "admin", action="global.lift", was_engaged=was)
    return _json({"engaged": False, "was_engaged": was})


def _kill_state(state: KillSwitchState | None) -> dict[str, Any]:
    if state is None:
        return {"engaged": False}
    return {"engaged": True, **msgspec.to_builtins(state)}


@get("/policy")
async def show_policy(request: AnyRequest) -> Response[bytes]:
    engine = runtime_of(request).policy.engine
    version = engine.version if engine is not None else None
    return _json({"configured": engine is not None, "version": version})


@post("/policy/reload")
async def reload_policy(request: AnyRequest) -> Response[bytes]:
    """Re-read the policy file now (a bad file keeps the last good policy: 400 with its line)."""
    policy = runtime_of(request).policy
    if policy.reloader is None or policy.engine is None:
        raise InvalidAdminRequestError("No [policy] policy_file is configured.")
    try:
        snapshot = await policy.reloader.reload_now()
    except PolicyError as exc:
        raise InvalidAdminRequestError(f"Policy refused, the last good one stays: {exc}") from None
    return _json({"configured": True, "version": snapshot.version})


@get("/budgets")
async def show_budgets(request: AnyRequest) -> Response[bytes]:
    """Used / reserved / remaining of the budgets of an agent (``?agent=``; its teams and its
    edges too) or a task tree (``?tree=``); with neither, every agent, team and edge that has
    limits in the config or live. Each limit says its ``source``: "config" or "live"; ``live``
    lists every override (wildcards such as ``agent:*`` and ``tree:*`` included)."""
    runtime = runtime_of(request)
    scopes = runtime.budget_scopes
    agent = request.query_params.get("agent") or ""
    tree = request.query_params.get("tree") or ""
    await scopes.refresh()
    found = scopes.described(agent, runtime.roles.of(agent) if agent else (), tree)
    statuses = await runtime.stores.budgets.status([f.scope for f in found]) if found else []
    source = {f.scope.key(): f.source for f in found}
    budgets = [{**msgspec.to_builtins(s), "source": source[s.scope]} for s in statuses]
    live = {key: msgspec.to_builtins(limits) for key, limits in scopes.live_overrides().items()}
    return _json({"budgets": budgets, "live": live})


@put("/budgets/{scope_key:str}")
async def set_budget(request: AnyRequest, scope_key: FromPath[str]) -> Response[bytes]:
    """Replace the limits of one scope (the path holds its URL-encoded key) on every replica: at
    once on this one, within about a second on the others. ``{"limits": []}`` unmeters it."""
    body = _decode(await request.body(), _BudgetLimitsBody)
    limits = tuple(Limit(metric=x.metric, window=x.window, limit=x.limit) for x in body.limits)
    runtime = runtime_of(request)
    try:
        await runtime.budget_scopes.set_live(scope_key, limits)
    except ValueError as exc:
        raise InvalidAdminRequestError(f"Invalid budget: {exc}") from None
    text = ",".join(f"{x.metric}/{x.window}={x.limit}" for x in limits)
    await runtime.audit.event("budget", "admin", action="set", scope=scope_key, limits=text)
    return _json({"scope": scope_key, "source": "live", "limits": msgspec.to_builtins(limits)})


@delete("/budgets/{scope_key:str}", status_code=204)
async def unset_budget(request: AnyRequest, scope_key: FromPath[str]) -> None:
    """Drop the live limits of one scope: its configured limits (if any) apply again.

    400 INVALID_ADMIN_REQUEST if the scope key is malformed or has no live limits.
    """
    try:
        check_override(scope_key, ())
    except ValueError as exc:
        raise InvalidAdminRequestError(f"Invalid budget: {exc}") from None
    runtime = runtime_of(request)
    if not await runtime.budget_scopes.unset_live(scope_key):
        raise InvalidAdminRequestError(
            f"No live limits are set for {scope_key}: nothing to unset (its config limits apply)."
        )
    await runtime.audit.event("budget", "admin", action="delete", scope=scope_key)


admin_router = Router(
    path="/admin",
    guards=[admin_guard],
    route_handlers=[
        list_agents,
        register_agent,
        show_agent,
        update_agent,
        suspend_agent,
        resume_agent,
        rotate_credential,
        delete_agent,
        show_tree,
        kill_tree,
        show_kill_switch,
        engage_kill_switch,
        lift_kill_switch,
        show_policy,
        reload_policy,
        show_budgets,
        set_budget,
        unset_budget,
        *MCP_SERVER_HANDLERS,
    ],
)
