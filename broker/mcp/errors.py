"""Refusals of the MCP edge (codes -32035..-32038 and -32108..-32115), BrokerErrors like every
other; ``broker.mcp.wire`` renders them as MCP JSON-RPC errors.

Where the broker's general errors already say the right thing (``AmbiguousRequestError``,
``JSONParseError``, ``BatchNotSupportedError``, ``InvalidRequestError``, ``InvalidParamsError``),
the MCP reading raises those; the classes here cover what only MCP has: registered MCP servers,
sessions, list cursors, the routing headers, and MCP servers that misbehave.
"""

from __future__ import annotations

from broker.errors import BrokerError


class McpServerNotFoundError(BrokerError):
    code, http_status, reason = -32035, 404, "MCP_SERVER_NOT_FOUND"
    default_message = "No MCP server is registered under that name."


class McpSessionNotFoundError(BrokerError):
    """HTTP 404 whatever the binding: the MCP transport tells a client to re-initialize by it."""

    code, http_status, reason = -32036, 404, "MCP_SESSION_NOT_FOUND"
    transport_level = True
    default_message = (
        "The Mcp-Session-Id was not issued by this broker to this caller for this server, or"
        " the session has ended; start a new session with 'initialize'."
    )


class McpSessionRequiredError(BrokerError):
    code, http_status, reason = -32037, 400, "MCP_SESSION_REQUIRED"
    transport_level = True
    default_message = (
        "This MCP server holds sessions: send the Mcp-Session-Id the 'initialize' answer gave."
    )


class McpCursorInvalidError(BrokerError):
    code, http_status, reason = -32038, 400, "MCP_CURSOR_INVALID"
    default_message = (
        "The cursor was not issued by this broker to this caller for this list, or it has"
        " expired; list again from the first page."
    )


class McpHeaderMismatchError(BrokerError):
    code, http_status, reason = -32108, 400, "MCP_HEADER_MISMATCH"
    default_message = (
        "The Mcp-Method, Mcp-Name or MCP-Protocol-Version header disagrees with the message"
        " body, or is sent twice; the broker does not forward a message that reads two ways."
    )


class McpProtocolVersionError(BrokerError):
    code, http_status, reason = -32109, 400, "MCP_PROTOCOL_VERSION_UNSUPPORTED"
    default_message = "The broker does not relay this MCP protocol version."


class McpNotAcceptableError(BrokerError):
    code, http_status, reason = -32110, 406, "MCP_NOT_ACCEPTABLE"
    transport_level = True
    grpc_status = "INVALID_ARGUMENT"
    default_message = (
        "An MCP client must accept both application/json and text/event-stream (Accept header)."
    )


class McpNameNotFoundError(BrokerError):
    code, http_status, reason = -32111, 404, "MCP_NAME_NOT_FOUND"
    default_message = (
        "No registered MCP server offers a tool, prompt or resource of that name here."
    )


class McpServerBadResponseError(BrokerError):
    code, http_status, reason = -32112, 502, "MCP_SERVER_BAD_RESPONSE"
    default_message = "The MCP server answered with something that is not a valid MCP message."


class McpServerExistsError(BrokerError):
    code, http_status, reason = -32113, 409, "MCP_SERVER_EXISTS"
    default_message = "An MCP server is already registered under that name."


class McpServerInvalidError(BrokerError):
    code, http_status, reason = -32114, 400, "MCP_SERVER_INVALID"
    default_message = "The MCP server registration is not valid."


class McpServerTimeoutError(BrokerError):
    code, http_status, reason = -32115, 504, "MCP_SERVER_TIMEOUT"
    retryable = True
    default_message = "The MCP server did not answer in time."
