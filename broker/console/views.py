"""The console's pages. Every action calls the admin API's own handler (``broker.http.admin``),
so a suspension, a rotation or a tree kill from here is exactly what the admin API does,
audited the same way; the console adds a session, a CSRF check and HTML around it.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import msgspec
from litestar import Response, Router, get, post
from litestar.params import FromPath
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router

from broker.audit.sources import AuditSourceError, RecordFilter
from broker.console import records
from broker.console.sessions import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Session,
    Sessions,
    same_token,
)
from broker.errors import (
    ApproverNotAllowedError,
    BrokerError,
    ConsoleCsrfRejectedError,
    ConsoleUnauthenticatedError,
    InvalidAdminRequestError,
)
from broker.http import admin
from broker.http import alerts as admin_alerts
from broker.http.admin import admin_token_digest, token_matches
from broker.http.state import AnyRequest, runtime_of
from broker.observability import record

HERE = Path(__file__).parent
PREFIX = "/console"
# Pages are the broker's own: no framing, no script or style from elsewhere, nothing cached.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class LoginRequiredError(Exception):
    """A page was asked for without a live session: go to the login page."""


def _sessions(request: AnyRequest) -> Sessions:
    return cast("Sessions", request.app.state.console_sessions)


async def _session(request: AnyRequest) -> Session:
    session = await _sessions(request).get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise LoginRequiredError
    return session


async def _checked(request: AnyRequest) -> tuple[Session, dict[str, str]]:
    """A POST's session and form, refused unless the form carries the session's CSRF token."""
    session = await _sessions(request).get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise ConsoleUnauthenticatedError("Your console session has ended: log in again.")
    form = dict(await request.form())
    if not same_token(form.get(CSRF_FIELD), session.csrf):
        await _audit_refusal(request, ConsoleCsrfRejectedError.reason)
        raise ConsoleCsrfRejectedError
    return session, {k: str(v) for k, v in form.items()}


async def _audit_refusal(request: AnyRequest, reason: str) -> None:
    await runtime_of(request).audit.event(
        "console.refused", "console", path=request.url.path[:200], reason=reason
    )


def _page(name: str, request: AnyRequest, session: Session | None, **context: Any) -> Template:
    settings = runtime_of(request).settings
    return Template(
        template_name=name,
        context={
            "csrf": session.csrf if session else "",
            "csrf_field": CSRF_FIELD,
            "page": name.removesuffix(".html"),
            "poll_ms": int(settings.console.poll_interval_s * 1000),
            **context,
        },
    )


def _time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


async def _admin_json(handler: Any, request: AnyRequest, *args: str) -> Any:
    """Run one of the admin API's handlers and read its JSON answer."""
    response = cast("Response[bytes]", await handler.fn(request, *args))
    return msgspec.json.decode(response.content) if response.content else None


# --- Login and logout ---------------------------------------------------------------------------


@get("/login")
async def login_form(request: AnyRequest) -> Template:
    token = secrets.token_urlsafe(24)
    page = _page("login.html", request, None, login_csrf=token, failed=False)
    page.cookies.append(_cookie(request, LOGIN_COOKIE, token, path=f"{PREFIX}/login"))
    return page


@post("/login", status_code=303)
async def login(request: AnyRequest) -> Response[Any]:
    form = dict(await request.form())
    if not same_token(form.get(CSRF_FIELD), request.cookies.get(LOGIN_COOKIE, "")):
        await _audit_refusal(request, ConsoleCsrfRejectedError.reason)
        raise ConsoleCsrfRejectedError
    expected = admin_token_digest(runtime_of(request).settings)
    if not token_matches(str(form.get("token", "")), expected):
        await _audit_refusal(request, ConsoleUnauthenticatedError.reason)
        raise ConsoleUnauthenticatedError("The admin token given is not the broker's.")
    opened = await _sessions(request).create()
    await runtime_of(request).audit.event("console.login", "console")
    redirect = Redirect(f"{PREFIX}/traffic", status_code=303)
    redirect.cookies.append(_cookie(request, SESSION_COOKIE, opened.session_id, path=PREFIX))
    return redirect


@post("/logout", status_code=303)
async def logout(request: AnyRequest) -> Response[Any]:
    await _checked(request)
    await _sessions(request).drop(request.cookies.get(SESSION_COOKIE))
    await runtime_of(request).audit.event("console.logout", "console")
    redirect = Redirect(f"{PREFIX}/login", status_code=303)
    redirect.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return redirect


def _cookie(request: AnyRequest, name: str, value: str, *, path: str) -> Any:
    from litestar.datastructures import Cookie  # noqa: PLC0415

    secure = runtime_of(request).settings.console.secure_cookie
    return Cookie(key=name, value=value, path=path, httponly=True, samesite="strict", secure=secure)


# --- Pages --------------------------------------------------------------------------------------


@get("/")
async def home(request: AnyRequest) -> Redirect:
    await _session(request)
    return Redirect(f"{PREFIX}/traffic")


@get("/traffic")
async def traffic(request: AnyRequest) -> Template:
    session = await _session(request)
    return _page("traffic.html", request, session, rows=await _recent(request))


@get("/traffic/rows")
async def traffic_rows(request: AnyRequest) -> Template:
    session = await _session(request)
    return _page("traffic_rows.html", request, session, rows=await _recent(request))


async def _recent(request: AnyRequest) -> list[dict[str, Any]]:
    """Every worker's and replica's latest requests (through the store), newest first."""
    shared = runtime_of(request).traffic
    seen = await shared.latest() if shared is not None else list(reversed(record.recent))
    return [_row(s) for s in seen]


def _row(seen: record.RequestSeen) -> dict[str, Any]:
    return {
        "time": _time(seen.at),
        "request_id": seen.request_id,
        "caller": seen.caller,
        "target": seen.target,
        "operation": seen.operation,
        "binding": seen.binding,
        "outcome": seen.outcome,
        "reason": seen.reason,
        "status": seen.status,
        "latency_ms": round(seen.latency_s * 1000, 1),
        "tree": seen.tree,
    }


@get("/agents")
async def agents(request: AnyRequest) -> Template:
    session = await _session(request)
    listed = await _admin_json(admin.list_agents, request)
    return _page("agents.html", request, session, agents=listed["agents"])


@post("/agents/{name:str}/suspend", status_code=303)
async def suspend(request: AnyRequest, name: FromPath[str]) -> Redirect:
    await _checked(request)
    await _admin_json(admin.suspend_agent, request, name)
    return Redirect(f"{PREFIX}/agents", status_code=303)


@post("/agents/{name:str}/resume", status_code=303)
async def resume(request: AnyRequest, name: FromPath[str]) -> Redirect:
    await _checked(request)
    await _admin_json(admin.resume_agent, request, name)
    return Redirect(f"{PREFIX}/agents", status_code=303)


@post("/agents/{name:str}/credential", status_code=200)
async def rotate(request: AnyRequest, name: FromPath[str]) -> Template:
    """The new credential is shown on this answer only (never stored for a later page)."""
    session, _ = await _checked(request)
    rotated = await _admin_json(admin.rotate_credential, request, name)
    return _page("rotated.html", request, session, agent=name, credential=rotated["credential"])


@get("/trees")
async def trees(request: AnyRequest) -> Template | Redirect:
    session = await _session(request)
    wanted = (request.query_params.get("tree") or "").strip()
    if wanted:
        return Redirect(f"{PREFIX}/trees/{quote(wanted, safe='')}")
    recent = list(dict.fromkeys(s.tree for s in reversed(record.recent) if s.tree))[:50]
    return _page("trees.html", request, session, recent_trees=recent)


@get("/trees/{tree:str}")
async def tree(request: AnyRequest, tree: FromPath[str]) -> Template:
    session = await _session(request)
    shown = await _admin_json(admin.show_tree, request, tree)
    log = _audit_log(request)
    roots: list[records.Hop] = []
    if log is not None:
        found = await records.search(log, RecordFilter(tree=tree), limit=5000)
        roots = records.build_tree(list(reversed(found)))
    return _page(
        "tree.html", request, session, tree=tree, shown=shown, roots=roots, audited=log is not None
    )


@post("/trees/{tree:str}/kill", status_code=200)
async def kill(request: AnyRequest, tree: FromPath[str]) -> Template:
    session, _ = await _checked(request)
    killed = await _admin_json(admin.kill_tree, request, tree)
    return _page("killed.html", request, session, tree=tree, killed=killed)


@get("/budgets")
async def budgets(request: AnyRequest) -> Template:
    session = await _session(request)
    shown = await _admin_json(admin.show_budgets, request)
    rows = [{**b, "burn": _burn(b)} for b in shown["budgets"]]
    return _page("budgets.html", request, session, budgets=rows, live=shown["live"])


def _burn(budget: dict[str, Any]) -> dict[str, int]:
    """Percent of the limit used and reserved (bars capped at 100)."""
    limit = max(1, int(budget["limit"]))
    used = min(100, int(budget["used"]) * 100 // limit)
    reserved = min(100 - used, int(budget["reserved"]) * 100 // limit)
    return {"used": used, "reserved": reserved}


_FILTERS = ("agent", "task", "tree", "decision", "kind", "since", "until")


@get("/audit")
async def audit(request: AnyRequest) -> Template:
    session = await _session(request)
    log = _audit_log(request)
    options = {k: (request.query_params.get(k) or "").strip() for k in _FILTERS}
    found: list[Any] = []
    problem = ""
    reports: list[Any] = []
    if log is not None:
        try:
            chosen = RecordFilter.from_options(options)
            found = await records.search(log, chosen)
        except AuditSourceError as exc:
            problem = str(exc)
        if request.query_params.get("verify"):
            keys = records.public_keys(runtime_of(request).keys)
            reports = await records.verify_all(log, keys)
    rows = [{**msgspec.to_builtins(r), "time": _time(r.ts_us / 1e6)} for r in found]
    return _page(
        "audit.html",
        request,
        session,
        audited=log is not None,
        filters=options,
        rows=rows,
        problem=problem,
        reports=reports,
        verified=bool(request.query_params.get("verify")),
    )


def _audit_log(request: AnyRequest) -> Any:
    trail = runtime_of(request).audit.trail
    return trail.log if trail is not None else None


@get("/approvals")
async def approvals(request: AnyRequest) -> Template:
    """The queue, pending first (oldest first), then what was decided and kept."""
    session = await _session(request)
    listed = await runtime_of(request).approvals.list()
    ordered = sorted(listed, key=lambda r: (r.state != "pending", r.created_at))
    rows = [
        {**msgspec.to_builtins(r), "expires": _time(r.expires_at)} for r in ordered
    ]
    return _page("approvals.html", request, session, approvals=rows)


@post("/approvals/{approval_id:str}", status_code=303)
async def decide_approval(request: AnyRequest, approval_id: FromPath[str]) -> Redirect:
    """Approve or deny with the approver's own token (typed into the form, never kept)."""
    _, form = await _checked(request)
    desk = runtime_of(request).approvals
    approver = desk.approver(form.get("approver_token", "").strip())
    if approver is None:
        await desk.refused_decision(approval_id, "not_an_approver")
        raise ApproverNotAllowedError("That is not an approver's token.")
    decision = form.get("decision", "")
    if decision not in ("approve", "deny"):
        raise InvalidAdminRequestError("Choose approve or deny.")
    await desk.decide(approval_id, approver, decision == "approve", form.get("reason", "")[:500])
    return Redirect(f"{PREFIX}/approvals", status_code=303)


@get("/alerts")
async def alerts(request: AnyRequest) -> Template:
    session = await _session(request)
    listed = await _admin_json(admin_alerts.list_alerts, request)
    rows = [
        {**a, "time": _time(a["at"]), "acked_time": _time(a["acked_at"]) if a["acked_at"] else ""}
        for a in listed["alerts"]
    ]
    return _page("alerts.html", request, session, alerts=rows, enabled=listed["enabled"])


@post("/alerts/{alert_id:str}/ack", status_code=303)
async def acknowledge(request: AnyRequest, alert_id: FromPath[str]) -> Redirect:
    await _checked(request)
    await _admin_json(admin_alerts.acknowledge_alert, request, alert_id)
    return Redirect(f"{PREFIX}/alerts", status_code=303)


# --- Errors -------------------------------------------------------------------------------------


def _to_login(_: AnyRequest, __: Exception) -> Response[Any]:
    return Redirect(f"{PREFIX}/login", status_code=303)


def _refusal_page(request: AnyRequest, err: BrokerError) -> Response[Any]:
    """A refusal on a console page, as a page (the same reason and code as the API's)."""
    return Template(
        template_name="refused.html",
        context={"err": err, "page": "refused", "csrf": "", "at": _time(time.time())},
        status_code=err.http_status,
    )


def console_router() -> Router:
    static = create_static_files_router(path="/static", directories=[HERE / "static"])
    return Router(
        path=PREFIX,
        route_handlers=[
            static,
            login_form,
            login,
            logout,
            home,
            traffic,
            traffic_rows,
            agents,
            suspend,
            resume,
            rotate,
            trees,
            tree,
            kill,
            budgets,
            audit,
            approvals,
            decide_approval,
            alerts,
            acknowledge,
        ],
        response_headers=SECURITY_HEADERS,
        exception_handlers={LoginRequiredError: _to_login, BrokerError: _refusal_page},
        include_in_schema=False,
    )
