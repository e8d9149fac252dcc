"""What one MCP request has learnt so far (a ``CallContext``), and its stages' signature.

The edge builds it from the HTTP request (``broker.http.mcp``); the MCP stages
(``broker.mcp.stages``) and the shared ones fill it in; the forward stage
(``broker.mcp.forward``) answers from it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from broker.types import CallContext, Outcome

if TYPE_CHECKING:
    from broker.delegation.tokens import DelegationClaims
    from broker.mcp.aggregate import Aggregate
    from broker.mcp.reading import McpMessage, McpOperation
    from broker.mcp.servers import McpServer
    from broker.mcp.sessions import UpstreamSession
    from broker.policy.decision import Decision

VIRTUAL = "*"  # the virtual server's name in seals, policy targets never use it


@dataclass(slots=True)
class McpContext(CallContext):
    """One MCP request: the shared ``CallContext`` and what MCP adds.

    ``server_name`` is the server the URL names, or ``VIRTUAL`` for the virtual server.
    ``judged`` is what policy judges: the request's operation, for the virtual server the
    operation on the underlying server (``server``) with that server's own name. It is not
    called ``operation``: the kill switch lets an A2A ``CancelTask`` operation through.
    """

    server_name: str
    http_method: str = "POST"
    raw_headers: tuple[tuple[str, str], ...] = ()  # every header line, to see one sent twice
    # Learnt by the stages:
    body: bytes = b""
    message: McpMessage | None = None
    judged: McpOperation | None = None
    version: str = ""  # the protocol version the request runs under
    server: McpServer | None = None  # where the request goes (None: several, or none)
    aggregate: Aggregate | None = None  # the virtual server's servers, for this caller
    routed_params: dict[str, Any] | None = None  # the virtual server's rewritten params
    sessions: dict[str, UpstreamSession] = field(default_factory=dict)  # sealed id, opened
    hop_token: str = ""
    hop: DelegationClaims | None = None
    decision: Decision | None = None  # the policy's answer for the call (an approval reads it)
    metered: bool = False  # a budget was charged for this call
    reply_id: msgspec.Raw | None = None  # a refused message's id, when it could be read

    @property
    def virtual(self) -> bool:
        return self.server_name == VIRTUAL

    @property
    def jsonrpc_id(self) -> msgspec.Raw | None:
        return self.message.id if self.message is not None else self.reply_id

    @property
    def tree(self) -> str | None:
        """The task tree the call belongs to: the token minted for it, else the one presented."""
        if self.hop is not None:
            return self.hop.tree
        return self.parent.tree if self.parent is not None else None

    @property
    def target(self) -> str:
        """The policy and audit target: ``mcp:<server>`` (``mcp:*`` for the virtual server
        before a call is routed)."""
        return f"mcp:{self.server.name if self.server is not None else self.server_name}"


McpCallNext = Callable[[McpContext], Awaitable[Outcome]]
McpStage = Callable[[McpContext, McpCallNext], Awaitable[Outcome]]
