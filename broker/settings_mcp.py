"""The ``[mcp]`` section of the broker's settings: the MCP edge and the registered MCP servers.

Kept free of broker imports, so ``broker.settings`` can import it (as it does the LLM section).
Secrets named by ``env`` are read when the registry is built (``broker.mcp.servers``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

_Positive = Annotated[float, msgspec.Meta(gt=0)]


class McpCredential(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What the broker presents to an MCP server: its own credential, never the caller's."""

    # none: nothing; bearer: Authorization: Bearer <secret>; header: <header>: <secret>
    kind: Literal["none", "bearer", "header"] = "none"
    env: str = ""  # the environment variable holding the secret (read at start-up)
    value: str = ""  # or the secret itself (tests, demos)
    header: str = "X-API-Key"  # kind = "header": the header to send it in


class McpServerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # The server's Streamable HTTP endpoint (egress rules apply), e.g. https://host/mcp
    url: str
    description: str = ""
    credential: McpCredential = msgspec.field(default_factory=McpCredential)
    # Offer this server's tools, prompts and resources through the virtual server too.
    aggregate: bool = True
    # Longest a request to the server may take, and longest its stream may stay quiet.
    timeout_s: _Positive = 120.0
    idle_timeout_s: _Positive = 60.0


class McpSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # How long a session the broker issued stays usable, and a list cursor.
    session_ttl_s: _Positive = 24 * 3600.0
    cursor_ttl_s: _Positive = 3600.0
    # The environment variable holding the secret that seals session ids, cursors and the
    # credentials of MCP servers registered at run time: the same on every replica. Empty:
    # derived from the broker's signing key.
    seal_key_env: str = ""
    # Largest single event (or JSON answer) relayed from an MCP server.
    max_event_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 4 * 1024 * 1024
    servers: dict[str, McpServerSettings] = msgspec.field(default_factory=dict)
