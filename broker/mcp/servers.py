"""Registered MCP servers: name, URL, and the credential the broker holds for each.

A caller never learns a server's credential and the server never sees the caller's: the
headers sent upstream are built here from the registration, the broker-minted hop token and the
few MCP headers the protocol needs (``upstream_headers``). Every URL passes the broker's egress
rules when it is registered (and the upstream client enforces them again on connect).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from broker.errors import BrokerError
from broker.mcp.errors import (
    McpServerExistsError,
    McpServerInvalidError,
    McpServerNotFoundError,
    McpSessionNotFoundError,
)
from broker.mcp.reading import (
    METHOD_HEADER,
    NAME_HEADER,
    PROTOCOL_VERSION_HEADER,
    SESSION_HEADER,
    encode_header_value,
)
from broker.mcp.sessions import UpstreamSession
from broker.settings_mcp import McpServerSettings, McpSettings

# Lower-case letters, digits, '-' and single '_' between them: a name never holds the virtual
# server's separator "__" nor ends with '_' (then "a_" + "__" + "x" would split as "a", "_x"),
# so a prefixed tool name splits one way only.
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]|_(?=[a-z0-9-])){0,62}")
# The same header the A2A forward stage sends the hop token in (broker.delegation).
HOP_TOKEN_HEADER = "a2a-delegation"  # noqa: S105 - a header name
# Inbound headers relayed to the server: the protocol's own, nothing that carries identity.
_RELAYED = frozenset({METHOD_HEADER, NAME_HEADER, "last-event-id"})
_PARAM_PREFIX = "mcp-param-"

CheckUrl = Callable[[str], object]  # raises EgressDeniedError (broker.outbound.egress.EgressPolicy)


@dataclass(frozen=True, slots=True)
class McpServer:
    name: str
    url: str
    description: str = ""
    auth_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    aggregate: bool = True
    timeout_s: float = 120.0
    idle_timeout_s: float = 60.0
    # "config": declared in [mcp.servers]; "api": registered at run time (broker.mcp.directory).
    source: Literal["config", "api"] = "config"
    # Changes with a run-time server's URL or credential; a session sealed under another
    # epoch no longer opens (decision 0070). Configured servers change only with a restart.
    epoch: str = ""


def server_from_settings(
    name: str, settings: McpServerSettings, environ: Mapping[str, str]
) -> McpServer:
    """Raises ``McpServerInvalidError`` for a bad name or a credential that cannot be read."""
    check_name(name)
    cred = settings.credential
    secret = environ.get(cred.env) if cred.env else cred.value
    if cred.kind != "none" and not secret:
        raise McpServerInvalidError(
            f"MCP server '{name}': its credential is empty"
            + (f" (${cred.env} is not set)." if cred.env else "."),
            metadata={"server": name})
    auth = auth_headers(cred.kind, cred.header, secret or "")
    return McpServer(name, settings.url, settings.description, auth, settings.aggregate,
                     settings.timeout_s, settings.idle_timeout_s)


def auth_headers(kind: str, header: str, secret: str) -> dict[str, str]:
    """The headers that present the broker's credential: ``Authorization: Bearer <secret>``
    ("bearer"), ``<header>: <secret>`` ("header"), nothing ("none")."""
    if kind == "bearer":
        return {"authorization": f"Bearer {secret}"}
    if kind == "header":
        return {header.lower(): secret}
    return {}


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise McpServerInvalidError(
            "An MCP server's name is 1-63 lower-case letters, digits, '-' and single '_'"
            " between them.",
            metadata={"server": name[:64]})


class McpServerRegistry:
    """The registered servers of one broker process, each URL egress-checked on the way in."""

    def __init__(self, check_url: CheckUrl) -> None:
        self._check_url = check_url
        self._servers: dict[str, McpServer] = {}

    def register(self, server: McpServer, *, replace: bool = False) -> None:
        """Raises ``McpServerInvalidError``, ``McpServerExistsError`` or the egress refusal."""
        check_name(server.name)
        if server.name in self._servers and not replace:
            raise McpServerExistsError(metadata={"server": server.name})
        try:
            self._check_url(server.url)
        except BrokerError as refused:
            refused.metadata.setdefault("server", server.name)
            raise
        self._servers[server.name] = server

    def remove(self, name: str) -> None:
        if self._servers.pop(name, None) is None:
            raise McpServerNotFoundError(metadata={"server": name[:64]})

    def discard(self, name: str) -> None:
        """Forget ``name`` if it is registered (a run-time server removed elsewhere)."""
        self._servers.pop(name, None)

    def find(self, name: str) -> McpServer | None:
        return self._servers.get(name)

    def get(self, name: str) -> McpServer:
        try:
            return self._servers[name]
        except KeyError:
            raise McpServerNotFoundError(metadata={"server": name[:64]}) from None

    def check_sessions(self, sessions: Mapping[str, UpstreamSession]) -> None:
        """Raise ``McpSessionNotFoundError`` if a server of the session changed its URL or
        credential since the session opened: nothing opened with the old ones is used again,
        and MCP clients start a new session on that error. A server removed since is left to
        the call that names it (``McpServerNotFoundError``)."""
        for name, session in sessions.items():
            server = self._servers.get(name)
            if server is not None and server.epoch != session.epoch:
                raise McpSessionNotFoundError(
                    "The MCP server's address or credential changed since this session opened;"
                    " start a new session with 'initialize'.", metadata={"server": name})

    def all(self) -> list[McpServer]:
        return sorted(self._servers.values(), key=lambda s: s.name)

    def aggregated(self) -> list[McpServer]:
        """The servers the virtual server offers, in the order its lists walk them."""
        return [s for s in self.all() if s.aggregate]


def registry_from_settings(
    settings: McpSettings, environ: Mapping[str, str], check_url: CheckUrl
) -> McpServerRegistry:
    registry = McpServerRegistry(check_url)
    for name, server in settings.servers.items():
        registry.register(server_from_settings(name, server, environ))
    return registry


def upstream_headers(
    server: McpServer,
    inbound: Iterable[tuple[str, str]],
    *,
    protocol_version: str,
    session: UpstreamSession | None,
    hop_token: str = "",
    name: str | None = None,
) -> dict[str, str]:
    """The headers of a request relayed to ``server``: content negotiation, the protocol
    version, the server's own session id, the broker's credential for it and the hop token.
    Of the caller's headers only the MCP routing ones pass; its credential never does.
    ``name``: the server's own name for what the call acts on, when the broker rewrote it (the
    virtual server), so that ``Mcp-Name`` keeps agreeing with the body."""
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        PROTOCOL_VERSION_HEADER: protocol_version,
    }
    for header, value in inbound:
        key = header.lower()
        if key in _RELAYED or key.startswith(_PARAM_PREFIX):
            headers[key] = value
    if name is not None and NAME_HEADER in headers:
        headers[NAME_HEADER] = encode_header_value(name)
    if session is not None and session.session_id:
        headers[SESSION_HEADER] = session.session_id
    if hop_token:
        headers[HOP_TOKEN_HEADER] = hop_token
    headers.update(server.auth_headers)
    return headers
