"""The MCP edge in process: Litestar routes + the MCP pipeline + memory stores, with a
``FakeTransport`` standing in for the MCP server (what reached it is what the test reads).
The real SDK servers and clients are in tests/e2e/test_mcp.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar import Litestar

from broker.approvals.desk import ApprovalDesk
from broker.audit.recorder import AuditRecorder
from broker.budgets.scopes import ConfiguredScopes
from broker.containment.global_kill import GlobalKillSwitch
from broker.datacontrols import DataControls, DataControlsSettings, DataRule
from broker.delegation.tokens import TokenMinter, TokenVerifier
from broker.http.mcp import mcp_route_handlers
from broker.http.mediation import MediationEdges
from broker.identity.credentials import credential_digest
from broker.identity.keys import BrokerKeys
from broker.mcp.servers import McpServer, McpServerRegistry
from broker.mcp.sessions import Sealer, derive_seal_key
from broker.observability import record as observed
from broker.outbound.fake import FakeRequest, FakeResponse, FakeTransport
from broker.pipeline.mcp import McpGateway, McpParts
from broker.policy.engine import PolicyEngine
from broker.policy.roles import AgentRoles
from broker.policy.runtime import DEFAULT_MODEL
from broker.settings import BudgetLimitSettings, BudgetSettings, ServerSettings, Settings
from broker.settings_approvals import ApprovalSettings
from broker.stages.authenticate import Authenticate
from broker.stores.base import Stores
from broker.stores.memory import MemoryBackend
from broker.types import AgentRecord

KEYS = BrokerKeys(Ed25519PrivateKey.generate())
ISSUER = "http://broker.test"
POLICY = """\
g, alice, role:dev
p, role:dev, mcp:tools, mcp:*, allow
p, role:dev, *, mcp:tools/call:delete_repo, deny
p, role:dev, mcp:tools, mcp:tools/call:merge, approve
"""
SERVER_KEY = "server-secret"
ACCEPT = "application/json, text/event-stream"
TOOLS = [{"name": n, "inputSchema": {"type": "object"}} for n in ("add", "delete_repo", "echo")]


class Recorded(AuditRecorder):
    """Keeps every record in memory (``AuditRecorder(None)`` drops them)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.records: list[dict[str, Any]] = []

    async def record(self, fields: Mapping[str, Any]) -> None:
        self.records.append(dict(fields))

    def record_soon(self, fields: Mapping[str, Any]) -> None:
        self.records.append(dict(fields))


class SlowStream:
    """An SSE answer that sends one progress event, then nothing for a long time."""

    status = 200
    headers: Mapping[str, str] = {"content-type": "text/event-stream"}
    content_type = "text/event-stream"
    is_event_stream = True

    def __init__(self) -> None:
        self.closed = False

    async def read(self, max_bytes: int) -> bytes:
        return b""

    async def chunks(self) -> AsyncIterator[bytes]:
        yield (b'data: {"jsonrpc":"2.0","method":"notifications/progress",'
               b'"params":{"progressToken":"p","progress":1}}\n\n')
        await asyncio.sleep(30)

    def close(self) -> None:
        self.closed = True


class ListenStream(SlowStream):
    """The server's own stream (GET): one notification with an event id, then quiet."""

    async def chunks(self) -> AsyncIterator[bytes]:
        yield (b'id: ev-7\ndata: {"jsonrpc":"2.0","method":"notifications/message",'
               b'"params":{"level":"info","data":"mail jane.doe@example.com"}}\n\n')
        await asyncio.sleep(30)


@dataclass
class Server:
    """The MCP server's side: answers JSON, remembers what it was sent; a GET opens its own
    stream (``get_status`` 405: a server without one)."""

    delay_s: float = 0.0
    get_status: int = 200
    seen: list[FakeRequest] = field(default_factory=list)
    streams: list[SlowStream] = field(default_factory=list)

    async def __call__(self, request: FakeRequest) -> FakeResponse:
        self.seen.append(request)
        if request.method == "DELETE":
            return FakeResponse(200)
        if request.method == "GET":
            if self.get_status != 200:
                return FakeResponse(self.get_status)
            self.streams.append(ListenStream())
            return self.streams[-1]  # type: ignore[return-value]
        await asyncio.sleep(self.delay_s)
        message = json.loads(request.body or b"{}")
        if message.get("params", {}).get("name") == "slow":
            self.streams.append(SlowStream())
            return self.streams[-1]  # type: ignore[return-value]
        if "id" not in message:
            return FakeResponse(202)
        result = _result(message)
        headers = {"content-type": "application/json", "mcp-session-id": "upstream-1"}
        body = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result})
        return FakeResponse(200, body.encode(), headers)


def _result(message: dict[str, Any]) -> dict[str, Any]:
    if message["method"] == "initialize":
        return {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                "serverInfo": {"name": "tools", "version": "1"}}
    if message["method"] == "tools/list":
        start = int(message.get("params", {}).get("cursor") or 0)
        page = {"tools": TOOLS[start:start + 2]}
        return {**page, "nextCursor": str(start + 2)} if start + 2 < len(TOOLS) else page
    params = message.get("params", {})
    if params.get("name") == "echo":  # answers its arguments back
        return {"content": [{"type": "text", "text": json.dumps(params.get("arguments"))}]}
    return {"content": [{"type": "text", "text": "done"}]}


@dataclass
class World:
    server: Server
    audit: Recorded
    http: httpx.AsyncClient
    stores: Stores
    desk: ApprovalDesk
    kill: GlobalKillSwitch
    engine: PolicyEngine

    async def post(self, body: dict[str, Any] | bytes, path: str = "/mcp/tools",
                   **headers: str) -> httpx.Response:
        sent = {"authorization": "Bearer cred-alice", "accept": ACCEPT,
                "content-type": "application/json", **headers}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        answer = await self.http.post(path, content=content, headers=sent)
        await asyncio.sleep(0)  # the outcome record follows the answer (decision 0106)
        return answer


def _world(
    server: Server, *, tool_limit: int = 0, timeout_s: float = 5.0,
    data: DataControls | None = None, raw_edge: bool = False,
) -> World:
    stores = MemoryBackend().stores()
    engine = PolicyEngine(DEFAULT_MODEL.read_text())
    engine.swap(engine.load_text(POLICY, "policy.csv"))
    budgets = BudgetSettings(tools={"tools.echo": (
        BudgetLimitSettings(metric="calls", window="lifetime", limit=tool_limit),)}
        if tool_limit else {})
    settings = Settings(server=ServerSettings(public_url=ISSUER), budgets=budgets)
    transport = FakeTransport(server)
    registry = McpServerRegistry(transport.egress.check_url)
    registry.register(McpServer("tools", "http://127.0.0.1:9/mcp",
                                auth_headers={"authorization": f"Bearer {SERVER_KEY}"},
                                timeout_s=timeout_s))
    audit = Recorded()
    kill = GlobalKillSwitch(stores.kill_switch, _nothing)
    desk = ApprovalDesk(stores.approvals, ApprovalSettings(), audit, stores.registry,
                        stores.revocations)
    gateway = McpGateway(McpParts(
        settings=settings, stores=stores, audit=audit,
        authenticate=Authenticate(stores.credentials, stores.registry), policy=engine,
        minter=TokenMinter(KEYS, ISSUER, 60), verifier=TokenVerifier(KEYS, ISSUER),
        roles=AgentRoles(engine), budget_scopes=ConfiguredScopes(budgets),
        kill=kill, transport=transport,
        registry=registry, sealer=Sealer([derive_seal_key(b"unit")]), approvals=desk,
        datacontrols=data))
    app = Litestar(route_handlers=mcp_route_handlers, openapi_config=None)
    app.state.runtime = SimpleNamespace(mcp=gateway)
    served: Any = MediationEdges(app, 4096) if raw_edge else app  # as `a2a-broker serve` runs
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=served), base_url=ISSUER)
    return World(server, audit, http, stores, desk, kill, engine)


async def _ready(world: World) -> World:
    await world.stores.credentials.replace("alice", credential_digest("cred-alice"))
    await world.stores.registry.put(AgentRecord(name="alice", card_json="{}"))
    return world


async def _nothing() -> None:
    return None


@pytest.fixture
async def world() -> World:
    return await _ready(_world(Server()))


def _call(name: str, rid: int = 1, **arguments: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call",
            "params": {"name": name, "arguments": arguments}}


async def test_a_tool_call_reaches_the_server_with_its_credential_never_the_callers(
    world: World,
) -> None:
    answer = await world.post(_call("add", a=1))
    assert answer.status_code == 200 and answer.json()["result"]["content"][0]["text"] == "done"
    [sent] = world.server.seen
    assert sent.headers["authorization"] == f"Bearer {SERVER_KEY}"
    assert "cred-alice" not in json.dumps(dict(sent.headers))
    assert sent.headers["a2a-delegation"].count(".") == 2  # a hop token, a JWT
    assert sent.body == json.dumps(_call("add", a=1)).encode()  # the caller's bytes


async def test_a_denied_call_is_refused_audited_and_never_sent(world: World) -> None:
    answer = await world.post(_call("delete_repo", rid=7, repo="prod"))
    seen = observed.recent[-1]  # what the console's live traffic shows, and the metrics count
    assert (seen.binding, seen.target, seen.operation, seen.outcome, seen.reason) == (
        "mcp", "mcp:tools", "mcp:tools/call", "refused", "POLICY_DENIED")
    assert answer.status_code == 200  # a JSON-RPC error, as on the A2A edge
    assert answer.json()["id"] == 7
    assert answer.json()["error"]["data"][0]["reason"] == "POLICY_DENIED"
    assert world.server.seen == []
    [record] = world.audit.records
    assert (record["decision"], record["reason"], record["target"]) == (
        "deny", "POLICY_DENIED", "mcp:tools")
    assert record["detail"]["mcp_name"] == "delete_repo"
    assert "prod" not in json.dumps({k: v for k, v in record.items() if k != "_body"})


async def test_an_allowed_call_is_audited_before_and_after(world: World) -> None:
    await world.post(_call("echo", text="hello"))
    phases = [r["detail"]["phase"] for r in world.audit.records]
    assert phases == ["forward", "outcome"]
    assert world.audit.records[0]["detail"]["argument_names"] == "text"


async def test_lists_are_filtered_and_their_cursors_sealed(world: World) -> None:
    first = (await world.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).json()
    assert [t["name"] for t in first["result"]["tools"]] == ["add"]  # delete_repo left out
    cursor = first["result"]["nextCursor"]
    assert cursor != "2"
    second = (await world.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list",
                                "params": {"cursor": cursor}})).json()
    assert [t["name"] for t in second["result"]["tools"]] == ["echo"]
    assert json.loads(world.server.seen[-1].body or b"")["params"]["cursor"] == "2"
    forged = (await world.post({"jsonrpc": "2.0", "id": 3, "method": "tools/list",
                                "params": {"cursor": "2"}})).json()
    assert forged["error"]["data"][0]["reason"] == "MCP_CURSOR_INVALID"


async def test_initialize_seals_the_servers_session_and_delete_ends_it(world: World) -> None:
    opened = await world.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}})
    session = opened.headers["mcp-session-id"]
    assert session != "upstream-1" and opened.json()["result"]["protocolVersion"] == "2025-11-25"
    await world.post(_call("add"), **{"mcp-session-id": session,
                                      "mcp-protocol-version": "2025-11-25"})
    assert world.server.seen[-1].headers["mcp-session-id"] == "upstream-1"
    ended = await world.http.delete("/mcp/tools", headers={
        "authorization": "Bearer cred-alice", "mcp-session-id": session})
    assert ended.status_code == 204
    assert world.server.seen[-1].method == "DELETE"
    assert world.server.seen[-1].headers["mcp-session-id"] == "upstream-1"
    assert world.audit.records[-1]["kind"] == "mcp.session"
    stolen = await world.http.delete("/mcp/tools", headers={
        "authorization": "Bearer cred-alice", "mcp-session-id": session[:-4] + "AAAA"})
    assert stolen.status_code == 404
    assert world.audit.records[-1]["reason"] == "MCP_SESSION_NOT_FOUND"
    no_session = await world.http.get("/mcp/tools", headers={
        "authorization": "Bearer cred-alice", "accept": "text/event-stream"})
    assert no_session.status_code == 400  # a server's stream belongs to a session
    assert no_session.json()["error"]["data"][0]["reason"] == "MCP_SESSION_REQUIRED"


async def test_refusals_answer_the_id_they_could_read(world: World) -> None:
    twice = b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"add","name":"x"}}'
    ambiguous = await world.post(twice)
    assert ambiguous.json()["id"] == 9
    assert ambiguous.json()["error"]["data"][0]["reason"] == "AMBIGUOUS_REQUEST"
    nobody = await world.post(_call("add"), authorization="Bearer wrong")
    assert nobody.status_code == 401
    unknown = await world.post(_call("add"), path="/mcp/nope")
    assert unknown.json()["error"]["data"][0]["reason"] == "MCP_SERVER_NOT_FOUND"
    assert world.server.seen == []


async def test_a_tool_budget_refuses_the_call_past_it() -> None:
    world = await _ready(_world(Server(), tool_limit=1))
    assert "result" in (await world.post(_call("echo"))).json()
    spent = (await world.post(_call("echo", rid=2))).json()
    assert spent["error"]["data"][0]["reason"] == "BUDGET_EXHAUSTED"
    assert spent["error"]["data"][0]["metadata"]["scope"] == "tool:tools.echo"
    assert "result" in (await world.post(_call("add", rid=3))).json()  # another tool
    assert len(world.server.seen) == 2


async def test_a_server_slower_than_its_timeout_is_answered_with_an_error() -> None:
    world = await _ready(_world(Server(delay_s=2.0), timeout_s=0.2))
    answer = (await world.post(_call("add"))).json()
    assert answer["error"]["data"][0]["reason"] == "MCP_SERVER_TIMEOUT"


async def test_a_call_an_approve_rule_holds_waits_for_a_person_then_goes_ahead_once(
    world: World,
) -> None:
    held = (await world.post(_call("merge", pr=7))).json()["error"]["data"][0]
    assert held["reason"] == "APPROVAL_PENDING"
    approval = held["metadata"]["approval_id"]
    assert world.server.seen == []
    await world.desk.decide(approval, "carol", approve=True, reason="ok")
    approved = await world.post(_call("merge", pr=7), **{"a2a-broker-approval": approval})
    assert approved.json()["result"]["content"][0]["text"] == "done"
    again = await world.post(_call("merge", pr=7), **{"a2a-broker-approval": approval})
    assert "error" in again.json()  # used up
    other = await world.post(_call("merge", pr=8), **{"a2a-broker-approval": approval})
    assert "error" in other.json()  # another call: not what was approved
    assert len(world.server.seen) == 1


async def test_an_open_stream_ends_when_the_kill_switch_is_engaged(world: World) -> None:
    call = asyncio.ensure_future(world.post(_call("slow")))
    for _ in range(100):  # the stream is open: its first event was relayed
        if world.server.streams:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    await world.kill.engage("ops", "incident")
    answer = await asyncio.wait_for(call, 5)  # not the 30 s the server would take
    events = [json.loads(line[6:]) for line in answer.text.splitlines()
              if line.startswith("data: ")]
    assert events[0]["method"] == "notifications/progress"
    assert events[-1]["error"]["data"][0]["reason"] == "KILL_SWITCH_ENGAGED"
    assert events[-1]["id"] == 1
    assert world.server.streams[0].closed


EMAIL = "jane.doe@example.com"


def _redacting(direction: str) -> DataControls:
    rule = DataRule(direction=direction, agents=("mcp:*",),  # type: ignore[arg-type]
                    actions={"pii:email": "redact"})
    return DataControls(DataControlsSettings(enabled=True, rules=(rule,)))


async def test_data_controls_redact_a_tools_arguments_before_the_server_sees_them() -> None:
    world = await _ready(_world(Server(), data=_redacting("request")))
    answer = (await world.post(_call("add", note=f"mail {EMAIL}"))).json()
    assert answer["result"]["content"][0]["text"] == "done"
    [sent] = world.server.seen
    assert EMAIL not in (sent.body or b"").decode()
    assert json.loads(sent.body or b"")["params"]["arguments"]["note"].startswith("mail <")
    forward = next(r for r in world.audit.records if r["detail"]["phase"] == "forward")
    assert forward["detail"]["mcp_name"] == "add"


async def test_data_controls_redact_what_a_tool_answers() -> None:
    world = await _ready(_world(Server(), data=_redacting("response")))
    answer = (await world.post(_call("echo", note=f"mail {EMAIL}"))).json()
    assert EMAIL in (world.server.seen[0].body or b"").decode()  # the request went as sent
    text = answer["result"]["content"][0]["text"]
    assert EMAIL not in text and "mail <" in text


async def test_the_raw_asgi_edge_serves_mcp_posts_as_the_routes_do() -> None:
    world = await _ready(_world(Server(), raw_edge=True))
    answer = await world.post(_call("add"))
    assert answer.json()["result"]["content"][0]["text"] == "done"
    assert answer.headers["a2a-broker-request-id"]
    virtual = await world.post({"jsonrpc": "2.0", "id": 3, "method": "ping"}, path="/mcp",
                               **{"mcp-protocol-version": "2026-07-28"})
    assert virtual.json() == {"jsonrpc": "2.0", "id": 3, "result": {}}
    too_big = await world.post(_call("add", pad="x" * 5000))
    assert too_big.json()["error"]["data"][0]["reason"] == "BODY_TOO_LARGE"
    virtual_get = await world.http.get("/mcp", headers={"authorization": "Bearer cred-alice"})
    assert virtual_get.status_code == 405  # to the Litestar routes: no stream of its own


# --- the server's own stream (GET) -------------------------------------------------------------


async def _session(world: World) -> str:
    opened = await world.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}})
    return opened.headers["mcp-session-id"]


def _listen(world: World, session: str, **headers: str) -> Any:
    sent = {"authorization": "Bearer cred-alice", "accept": "text/event-stream",
            "mcp-session-id": session, **headers}
    return asyncio.ensure_future(world.http.get("/mcp/tools", headers=sent))


async def _opened(world: World) -> None:
    for _ in range(100):
        if world.server.streams:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)


async def test_the_servers_own_stream_is_relayed_in_the_callers_session(world: World) -> None:
    listen = _listen(world, await _session(world), **{"last-event-id": "ev-6",
                                                       "cookie": "alice"})
    await _opened(world)
    sent = world.server.seen[-1]
    assert (sent.method, sent.headers["mcp-session-id"]) == ("GET", "upstream-1")
    assert sent.headers["authorization"] == f"Bearer {SERVER_KEY}"
    assert sent.headers["last-event-id"] == "ev-6"  # resumption passes through
    assert sent.headers["a2a-delegation"].count(".") == 2 and "cookie" not in sent.headers
    assert "cred-alice" not in json.dumps(dict(sent.headers))
    await world.kill.engage("ops", "incident")  # ends it like any other MCP stream
    answer = await asyncio.wait_for(listen, 5)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert "id: ev-7" in answer.text
    events = [json.loads(line[6:]) for line in answer.text.splitlines()
              if line.startswith("data: ")]
    assert events[0]["method"] == "notifications/message"
    assert events[-1]["error"]["data"][0]["reason"] == "KILL_SWITCH_ENGAGED"
    assert world.server.streams[0].closed
    seen = observed.recent[-1]  # the metrics' and the console's view of it
    assert (seen.operation, seen.target, seen.binding) == ("mcp:GET", "mcp:tools", "mcp")
    forward, outcome = [r for r in world.audit.records if r["operation"] == "mcp:GET"]
    assert (forward["detail"]["phase"], forward["decision"]) == ("forward", "allow")
    assert outcome["detail"]["phase"] == "outcome" and outcome["target"] == "mcp:tools"


async def test_a_stream_is_refused_without_the_callers_session_or_policy(world: World) -> None:
    session = await _session(world)
    other = await world.http.get("/mcp/tools", headers={
        "authorization": "Bearer cred-alice", "accept": "text/event-stream",
        "mcp-session-id": session[:-4] + "AAAA"})
    assert other.status_code == 404
    no_sse = await world.http.get("/mcp/tools", headers={
        "authorization": "Bearer cred-alice", "accept": "application/json",
        "mcp-session-id": session})
    assert no_sse.status_code == 406
    world.engine.swap(world.engine.load_text("g, alice, role:dev\n", "policy.csv"))
    denied = await world.http.get("/mcp/tools", headers={
        "authorization": "Bearer cred-alice", "accept": "text/event-stream",
        "mcp-session-id": session})
    assert denied.status_code == 403
    assert denied.json()["error"]["data"][0]["reason"] == "POLICY_DENIED"
    assert [r for r in world.server.seen if r.method == "GET"] == []
    refused = [r for r in world.audit.records if r["operation"] == "mcp:GET"]
    assert [r["reason"] for r in refused] == [
        "MCP_SESSION_NOT_FOUND", "MCP_NOT_ACCEPTABLE", "POLICY_DENIED"]


async def test_a_server_without_a_stream_is_answered_405() -> None:
    world = await _ready(_world(Server(get_status=405)))
    answer = await world.http.get("/mcp/tools", headers={
        "authorization": "Bearer cred-alice", "accept": "text/event-stream",
        "mcp-session-id": await _session(world)})
    assert answer.status_code == 405 and "GET" in answer.headers["allow"]
    assert answer.json()["error"]["data"][0]["reason"] == "HTTP_METHOD_NOT_ALLOWED"


async def test_the_data_controls_see_every_message_of_the_servers_stream() -> None:
    world = await _ready(_world(Server(), data=_redacting("response")))
    listen = _listen(world, await _session(world))
    await _opened(world)
    await world.kill.engage("ops", "incident")
    answer = await asyncio.wait_for(listen, 5)
    assert "mail <" in answer.text and EMAIL not in answer.text
