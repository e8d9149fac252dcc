"""The admin API's MCP servers (``/admin/mcp-servers``), behind the admin router's guard.

Run-time registration as for agents: register, list, show, update, rotate the credential the
broker holds, remove. No read returns a held secret (only its kind and a fingerprint). Every
change is an audit record (``registry.change``, action ``mcp.*``) once it took effect, every
refusal one too (``registry.refused``, with the reason).
"""

from __future__ import annotations

import logging

import msgspec
from litestar import Response, delete, get, post, put
from litestar.params import FromPath

from broker.errors import BrokerError
from broker.http.admin_body import decode_body, json_reply
from broker.http.state import AnyRequest, runtime_of
from broker.mcp.directory import McpServerChanges, McpServerRegistration
from broker.mcp.errors import McpServerInvalidError
from broker.settings_mcp import McpCredential
from broker.stores.mcp_servers import McpServerRecord

log = logging.getLogger("a2a_broker.admin")


class _RotateBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    credential: McpCredential


async def _changed(request: AnyRequest, action: str, record: McpServerRecord | None,
                   name: str) -> None:
    detail: dict[str, str] = {"action": action, "server": name}
    if record is not None:
        detail |= {"url": record.url, "credential_kind": record.credential_kind,
                   "credential_fingerprint": record.credential_fingerprint}
    await runtime_of(request).audit.event("registry.change", "admin", **detail)


async def _refused(request: AnyRequest, action: str, name: str, err: BrokerError) -> None:
    """A refused registration or change is an audit record too (who tried what, and why)."""
    try:
        await runtime_of(request).audit.event(
            "registry.refused", "admin", action=action, server=name[:100], reason=err.reason)
    except BrokerError as audit_err:
        log.error("refused %s of %r not audited: %s", action, name[:100], audit_err.reason)  # noqa: TRY400


@get("/mcp-servers")
async def list_mcp_servers(request: AnyRequest) -> Response[bytes]:
    directory = runtime_of(request).mcp_servers
    return json_reply({"servers": [directory.summary(r) for r in await directory.list()]})


@post("/mcp-servers")
async def register_mcp_server(request: AnyRequest) -> Response[bytes]:
    name = ""
    directory = runtime_of(request).mcp_servers
    try:
        body = await request.body()
        name = _name_of(body)
        spec = decode_body(body, McpServerRegistration, McpServerInvalidError)
        record = await directory.register(spec)
    except BrokerError as err:
        await _refused(request, "mcp.register", name, err)
        raise
    await _changed(request, "mcp.register", record, record.name)
    return json_reply({"server": directory.summary(record)}, 201)


@get("/mcp-servers/{name:str}")
async def show_mcp_server(request: AnyRequest, name: FromPath[str]) -> Response[bytes]:
    directory = runtime_of(request).mcp_servers
    return json_reply({"server": directory.summary(await directory.get(name))})


@put("/mcp-servers/{name:str}")
async def update_mcp_server(request: AnyRequest, name: FromPath[str]) -> Response[bytes]:
    directory = runtime_of(request).mcp_servers
    try:
        changes = decode_body(await request.body(), McpServerChanges, McpServerInvalidError)
        record = await directory.update(name, changes)
    except BrokerError as err:
        await _refused(request, "mcp.update", name, err)
        raise
    await _changed(request, "mcp.update", record, name)
    return json_reply({"server": directory.summary(record)})


@post("/mcp-servers/{name:str}/credential")
async def rotate_mcp_credential(request: AnyRequest, name: FromPath[str]) -> Response[bytes]:
    directory = runtime_of(request).mcp_servers
    try:
        body = decode_body(await request.body(), _RotateBody, McpServerInvalidError)
        record = await directory.rotate(name, body.credential)
    except BrokerError as err:
        await _refused(request, "mcp.credential.rotate", name, err)
        raise
    await _changed(request, "mcp.credential.rotate", record, name)
    return json_reply({"server": directory.summary(record)})


@delete("/mcp-servers/{name:str}", status_code=204)
async def remove_mcp_server(request: AnyRequest, name: FromPath[str]) -> None:
    try:
        await runtime_of(request).mcp_servers.remove(name)
    except BrokerError as err:
        await _refused(request, "mcp.remove", name, err)
        raise
    await _changed(request, "mcp.remove", None, name)


def _name_of(body: bytes) -> str:
    """The name a refused registration tried, for its audit record ("" if unreadable)."""
    try:
        name = msgspec.json.decode(body, type=dict).get("name", "")
    except (msgspec.DecodeError, RecursionError):
        return ""
    return name if isinstance(name, str) else ""


MCP_SERVER_HANDLERS = [
    list_mcp_servers,
    register_mcp_server,
    show_mcp_server,
    update_mcp_server,
    rotate_mcp_credential,
    remove_mcp_server,
]
