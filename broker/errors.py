"""The broker's error types and their one mapping to the wire.

Every refusal the broker makes is a ``BrokerError`` subclass. Each class carries a JSON-RPC code,
an HTTP status and a stable ``reason`` string; the table is checked for uniqueness by a test.
Callers see ``message`` (written for them) and never internal exception text; ``detail`` goes to
the log only.

Codes: A2A's own errors keep the spec's codes (-32001..-32009) and the JSON-RPC standard ones
(-32600..-32700). The broker's own refusals use -32010..-32099 from the implementation-defined
server-error range, which A2A 1.0 leaves unused.

Domains: ``google.rpc.ErrorInfo.domain`` names the namespace its ``reason`` belongs to. An error
whose code and reason are the A2A specification's (TASK_NOT_FOUND, INVALID_PARAMS, ...) carries
``a2a-protocol.org`` whoever raises it, so every A2A client maps it; every reason the broker
defines carries ``a2a-broker``. An agent may never answer in the broker's domain (see
``broker.protocols.a2a.answers``), so an error in that domain always comes from the broker.
"""

from __future__ import annotations

from typing import Any, ClassVar

ERROR_DOMAIN_A2A = "a2a-protocol.org"
ERROR_DOMAIN_BROKER = "a2a-broker"

# google.rpc.Code names for HTTP statuses used by the REST binding's error payload.
_GRPC_STATUS_BY_HTTP: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    405: "UNIMPLEMENTED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ALREADY_EXISTS",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    431: "INVALID_ARGUMENT",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def grpc_status_name(http_status: int) -> str:
    return _GRPC_STATUS_BY_HTTP.get(http_status, "UNKNOWN")


class BrokerError(Exception):
    """Base of every refusal. Subclasses set the class attributes below."""

    code: ClassVar[int] = -32603
    http_status: ClassVar[int] = 500
    reason: ClassVar[str] = "INTERNAL_ERROR"
    domain: ClassVar[str] = ERROR_DOMAIN_BROKER
    default_message: ClassVar[str] = "The broker could not handle the request."
    # For the JSON-RPC binding: errors of the HTTP transport itself (credentials, body size,
    # availability) keep their HTTP status; all others travel as HTTP 200, as JSON-RPC wants.
    transport_level: ClassVar[bool] = False
    retryable: ClassVar[bool] = False
    # Seconds for the Retry-After header when the raiser gives none (None: no header).
    default_retry_after: ClassVar[float | None] = None
    # google.rpc.Code name on the REST binding when the spec names one other than the status's.
    grpc_status: ClassVar[str | None] = None

    def __init__(
        self,
        message: str | None = None,
        *,
        detail: str | None = None,
        metadata: dict[str, str] | None = None,
        data: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.detail = detail
        self.metadata = metadata or {}
        self.data = data
        self.retry_after = self.default_retry_after if retry_after is None else retry_after
        super().__init__(self.message)


# --- JSON-RPC / A2A protocol errors -------------------------------------------------------------


class JSONParseError(BrokerError):
    code, http_status, reason = -32700, 400, "INVALID_JSON"
    default_message = "The request body is not valid JSON."


class InvalidUtf8Error(BrokerError):
    code, http_status, reason = -32700, 400, "INVALID_UTF8"
    default_message = "The request body is not valid UTF-8."


class InvalidRequestError(BrokerError):
    code, http_status, reason = -32600, 400, "INVALID_REQUEST"
    domain = ERROR_DOMAIN_A2A
    default_message = "The request is not a valid JSON-RPC 2.0 request."


class BatchNotSupportedError(BrokerError):
    code, http_status, reason = -32600, 400, "BATCH_NOT_SUPPORTED"
    default_message = "Batch requests are not supported."


class NotificationNotSupportedError(BrokerError):
    code, http_status, reason = -32600, 400, "NOTIFICATION_NOT_SUPPORTED"
    default_message = (
        "A JSON-RPC request without an 'id' is a notification, which gets no answer; every A2A"
        " method answers, so send an 'id' (a string or an integer)."
    )


class MethodNotFoundError(BrokerError):
    code, http_status, reason = -32601, 404, "METHOD_NOT_FOUND"
    domain = ERROR_DOMAIN_A2A
    default_message = "Method not found."


class InvalidParamsError(BrokerError):
    code, http_status, reason = -32602, 400, "INVALID_PARAMS"
    domain = ERROR_DOMAIN_A2A
    default_message = "Invalid method parameters."


class TaskNotFoundError(BrokerError):
    code, http_status, reason = -32001, 404, "TASK_NOT_FOUND"
    domain = ERROR_DOMAIN_A2A
    default_message = "Task not found"  # the a2a-sdk's wording, so answers match


class TaskNotCancelableError(BrokerError):
    code, http_status, reason = -32002, 400, "TASK_NOT_CANCELABLE"
    domain = ERROR_DOMAIN_A2A
    grpc_status = "FAILED_PRECONDITION"
    default_message = "Task cannot be canceled"  # the a2a-sdk's wording


class PushNotificationNotSupportedError(BrokerError):
    code, http_status, reason = -32003, 400, "PUSH_NOTIFICATION_NOT_SUPPORTED"
    domain = ERROR_DOMAIN_A2A
    grpc_status = "FAILED_PRECONDITION"
    default_message = "Push notifications are not supported by the agent"  # the a2a-sdk's


class VersionNotSupportedError(BrokerError):
    code, http_status, reason = -32009, 400, "VERSION_NOT_SUPPORTED"
    domain = ERROR_DOMAIN_A2A
    grpc_status = "FAILED_PRECONDITION"
    default_message = (
        "A2A version not supported: the broker speaks A2A 1.x; send the header 'A2A-Version: 1.0'."
    )


# --- The broker's own refusals -----------------------------------------------------------------


class AmbiguousRequestError(BrokerError):
    code, http_status, reason = -32010, 400, "AMBIGUOUS_REQUEST"
    default_message = "The request could be read two ways, so the broker does not forward it."


class InvalidSkillError(BrokerError):
    code, http_status, reason = -32011, 400, "INVALID_SKILL"
    default_message = (
        "A skill id is 1-128 characters without whitespace or control characters, given in"
        " 'A2A-Skill' or message.metadata.skill (a JSON string)."
    )


class UnsupportedMediaTypeError(BrokerError):
    code, http_status, reason = -32012, 415, "UNSUPPORTED_MEDIA_TYPE"
    transport_level = True
    default_message = (
        "The request body must be JSON in UTF-8: send 'Content-Type: application/json'"
        " (or application/a2a+json)."
    )


class TooManyItemsError(BrokerError):
    code, http_status, reason = -32013, 400, "TOO_MANY_ITEMS"
    default_message = "The request holds more items than the broker accepts."


class InvalidDeadlineError(BrokerError):
    code, http_status, reason = -32014, 400, "INVALID_DEADLINE"
    default_message = (
        "'A2A-Deadline' must be a number of seconds, at least 0.001 and finite."
    )


class InvalidPageTokenError(BrokerError):
    code, http_status, reason = -32015, 400, "INVALID_PAGE_TOKEN"
    default_message = (
        "The page token was not issued by this broker to this caller for this agent, or it"
        " has expired; list again from the first page."
    )


class AgentNameConfusableError(BrokerError):
    code, http_status, reason = -32016, 409, "AGENT_NAME_CONFUSABLE"
    default_message = "The name looks like the name of an agent that is already registered."


# Connection bounds (broker/http/connections.py) and the global kill switch (issue 12).


class ConnectionLimitError(BrokerError):
    code, http_status, reason = -32025, 503, "CONNECTION_LIMIT"
    transport_level = True
    retryable = True
    default_retry_after = 1.0
    default_message = (
        "The broker has as many connections open as it accepts, all of them busy; retry shortly."
    )


class RequestHeaderTimeoutError(BrokerError):
    code, http_status, reason = -32026, 408, "REQUEST_HEADER_TIMEOUT"
    transport_level = True
    retryable = True
    default_message = "The request's headers did not arrive in time; the connection is closed."


class RequestBodyTimeoutError(BrokerError):
    code, http_status, reason = -32027, 408, "REQUEST_BODY_TIMEOUT"
    transport_level = True
    retryable = True
    default_message = "The request's body did not arrive in time; the connection is closed."


class KillSwitchEngagedError(BrokerError):
    code, http_status, reason = -32028, 403, "KILL_SWITCH_ENGAGED"
    default_message = (
        "An operator has stopped all traffic through the broker (global kill switch); "
        "no new hop is accepted until it is lifted."
    )


# Data controls (broker/datacontrols, docs/datacontrols.md). Metadata names types, never values.


class DataBlockedError(BrokerError):
    code, http_status, reason = -32030, 403, "DATA_BLOCKED"
    default_message = (
        "The request holds data of a type the broker's data controls do not let through to"
        " this target."
    )


class DataResponseBlockedError(BrokerError):
    code, http_status, reason = -32031, 502, "DATA_RESPONSE_BLOCKED"
    default_message = (
        "The answer holds data of a type the broker's data controls do not let through to"
        " the caller, so it is not relayed."
    )


class DataFlowDeniedError(BrokerError):
    code, http_status, reason = -32032, 403, "DATA_FLOW_DENIED"
    default_message = (
        "This work carries data of a type that policy does not let flow to this agent or model."
    )


class DataScanLimitError(BrokerError):
    code, http_status, reason = -32033, 413, "DATA_SCAN_LIMIT"
    default_message = (
        "The content is larger than the broker's data controls scan, so it is not forwarded"
        " unchecked."
    )


class DataControlsUnavailableError(BrokerError):
    code, http_status, reason = -32034, 503, "DATA_CONTROLS_UNAVAILABLE"
    retryable = True
    default_retry_after = 1.0
    default_message = (
        "The broker's data controls could not inspect the content, so it is not forwarded"
        " unchecked; retry shortly."
    )


class UnauthenticatedError(BrokerError):
    code, http_status, reason = -32040, 401, "UNAUTHENTICATED"
    transport_level = True
    default_message = "Missing or invalid broker credential (send 'Authorization: Bearer <token>')."


class InvalidCredentialError(BrokerError):
    code, http_status, reason = -32039, 401, "INVALID_CREDENTIAL"
    transport_level = True
    default_message = "The broker credential is not valid (unknown, rotated or revoked)."


class ForbiddenError(BrokerError):
    code, http_status, reason = -32041, 403, "FORBIDDEN"
    default_message = "The caller is not allowed to do this."


class AgentNotFoundError(BrokerError):
    code, http_status, reason = -32042, 404, "AGENT_NOT_FOUND"
    default_message = "No agent is registered under that name."


class AgentSuspendedError(BrokerError):
    code, http_status, reason = -32043, 403, "AGENT_SUSPENDED"
    default_message = "The agent is suspended."


class CallerSuspendedError(BrokerError):
    code, http_status, reason = -32044, 403, "CALLER_SUSPENDED"
    transport_level = True
    default_message = "The calling agent is suspended."


class BodyTooLargeError(BrokerError):
    code, http_status, reason = -32045, 413, "BODY_TOO_LARGE"
    transport_level = True
    default_message = "The request body is larger than the broker accepts."


class JSONTooDeepError(BrokerError):
    code, http_status, reason = -32046, 400, "JSON_TOO_DEEP"
    default_message = "The request body nests JSON deeper than the broker accepts."


class HeadersTooLargeError(BrokerError):
    code, http_status, reason = -32047, 431, "HEADERS_TOO_LARGE"
    transport_level = True
    default_message = "The request headers are larger than the broker accepts."


class BindingNotSupportedError(BrokerError):
    code, http_status, reason = -32048, 400, "BINDING_NOT_SUPPORTED"
    default_message = "The target agent does not offer this protocol binding."


class EgressDeniedError(BrokerError):
    code, http_status, reason = -32049, 400, "EGRESS_DENIED"
    default_message = "The destination address is not allowed by the broker's egress rules."


class UpstreamUnreachableError(BrokerError):
    code, http_status, reason = -32050, 502, "UPSTREAM_UNREACHABLE"
    retryable = True
    default_message = "The target agent could not be reached."


class UpstreamConnectTimeoutError(BrokerError):
    code, http_status, reason = -32051, 504, "UPSTREAM_CONNECT_TIMEOUT"
    retryable = True
    default_message = "Connecting to the target agent timed out."


class UpstreamTimeoutError(BrokerError):
    code, http_status, reason = -32052, 504, "UPSTREAM_TIMEOUT"
    retryable = True
    default_message = "The target agent did not answer in time."


class UpstreamBadResponseError(BrokerError):
    code, http_status, reason = -32053, 502, "UPSTREAM_BAD_RESPONSE"
    default_message = "The target agent answered with something that is not a valid A2A response."


class StreamIdleTimeoutError(BrokerError):
    code, http_status, reason = -32054, 504, "STREAM_IDLE_TIMEOUT"
    retryable = True
    default_message = "The target agent's stream sent nothing for too long."


class StreamMaxDurationError(BrokerError):
    code, http_status, reason = -32055, 504, "STREAM_MAX_DURATION"
    default_message = "The stream reached the broker's maximum duration."


class UpstreamResponseTooLargeError(BrokerError):
    code, http_status, reason = -32056, 502, "UPSTREAM_RESPONSE_TOO_LARGE"
    default_message = "The target agent's response is larger than the broker relays."


class UpstreamPoolExhaustedError(BrokerError):
    code, http_status, reason = -32057, 503, "UPSTREAM_POOL_EXHAUSTED"
    retryable = True
    default_retry_after = 1.0
    default_message = "Every upstream connection of the broker is busy; retry shortly."


class UpstreamCircuitOpenError(BrokerError):
    """The target's circuit breaker is open (docs/decisions/0021); retry after the delay."""

    code, http_status, reason = -32020, 503, "UPSTREAM_CIRCUIT_OPEN"
    retryable = True
    default_retry_after = 1.0
    default_message = (
        "The target agent has been failing, so the broker is not calling it for a while; "
        "retry after the delay given."
    )


class UpstreamBulkheadFullError(BrokerError):
    """The target's concurrency cap on this broker is reached (docs/decisions/0022)."""

    code, http_status, reason = -32021, 503, "UPSTREAM_BULKHEAD_FULL"
    retryable = True
    default_retry_after = 1.0
    default_message = (
        "As many calls to the target agent as the broker allows are in flight; retry shortly."
    )


class LlmProviderCircuitOpenError(BrokerError):
    """The LLM provider's circuit breaker is open (docs/decisions/0021); retry after the delay.

    Kept here, with the A2A breaker's codes, rather than in ``broker.llm.errors``."""

    code, http_status, reason = -32022, 503, "LLM_PROVIDER_CIRCUIT_OPEN"
    retryable = True
    default_retry_after = 1.0
    default_message = (
        "The model provider has been failing, so the broker is not calling it for a while; "
        "retry after the delay given."
    )


class StoreUnavailableError(BrokerError):
    code, http_status, reason = -32060, 503, "STORE_UNAVAILABLE"
    transport_level = True
    retryable = True
    default_retry_after = 1.0
    default_message = "The broker's state store is unavailable; retry shortly."


class ApprovalPendingError(BrokerError):
    """An LLM call waits for a human: retry with ``A2A-Broker-Approval: <approval_id>`` once
    approved (metadata: approval_id, expires_at)."""

    code, http_status, reason = -32062, 403, "APPROVAL_PENDING"
    # Not retryable as it stands: a client that retries by itself would only ask again. The
    # caller sends it again with the approval's id once approved (Retry-After: when to look).
    default_retry_after = 30.0
    default_message = (
        "This call awaits a human's approval; once approved, send it again, unchanged, with the"
        " header 'A2A-Broker-Approval: <approval_id>'."
    )


class ApprovalDeniedError(BrokerError):
    code, http_status, reason = -32063, 403, "APPROVAL_DENIED"
    default_message = "A human denied this call."  # metadata: approval_id, reason


class ApprovalNotUsableError(BrokerError):
    code, http_status, reason = -32064, 403, "APPROVAL_NOT_USABLE"
    default_message = (
        "The approval presented cannot be used: it is unknown, pending, expired, voided, used"
        " already, or approves a different call."
    )  # metadata: approval_id, state or why


class ApproverNotAllowedError(BrokerError):
    code, http_status, reason = -32065, 403, "APPROVER_NOT_ALLOWED"
    default_message = (
        "This approver may not decide this approval: not a configured approver, the requester"
        " or in its chain, or already decided it."
    )


class ApprovalNotFoundError(BrokerError):
    code, http_status, reason = -32066, 404, "APPROVAL_NOT_FOUND"
    default_message = "No such approval (unknown, or forgotten after its retention)."


class StoreFullError(StoreUnavailableError):
    """Redis refused a write for lack of memory (``OOM``): nothing was written, so the broker
    refuses rather than forward a call whose budget, route or revocation it could not keep."""

    code, http_status, reason = -32067, 503, "STORE_FULL"
    default_retry_after = 5.0
    default_message = "The broker's state store is full; retry later."


class StoreTopologyError(BrokerError):
    """At start: the Redis servers do not run the ``[store] redis_mode`` the settings name."""

    code, http_status, reason = -32068, 503, "STORE_TOPOLOGY_MISMATCH"
    transport_level = True
    default_message = "The broker's state store is not the Redis topology its settings name."


class StoreMayEvictError(StoreTopologyError):
    """At start: Redis's ``maxmemory-policy`` could evict the broker's keys (a budget counter,
    a revocation, a tree) without a word, and ``[store] allow_eviction`` does not accept it."""

    code, http_status, reason = -32069, 503, "STORE_MAY_EVICT"
    default_message = "The broker's state store may evict the broker's keys when it is full."


class AuditUnavailableError(BrokerError):
    code, http_status, reason = -32061, 503, "AUDIT_UNAVAILABLE"
    transport_level = True
    retryable = True
    default_retry_after = 1.0
    default_message = "The broker cannot write its audit log, so it forwards nothing; retry soon."


class InvalidAgentCardError(BrokerError):
    code, http_status, reason = -32070, 400, "INVALID_AGENT_CARD"
    default_message = "The agent card is not valid."


class AgentCardSignatureError(BrokerError):
    code, http_status, reason = -32071, 400, "AGENT_CARD_SIGNATURE_INVALID"
    default_message = "The agent card's signature does not verify."


class AgentCardFetchError(BrokerError):
    code, http_status, reason = -32072, 502, "AGENT_CARD_FETCH_FAILED"
    default_message = "The agent card could not be fetched from the given URL."


class AgentExistsError(BrokerError):
    code, http_status, reason = -32073, 409, "AGENT_EXISTS"
    default_message = "An agent is already registered under that name."


class InvalidAdminRequestError(BrokerError):
    code, http_status, reason = -32074, 400, "INVALID_ADMIN_REQUEST"
    default_message = "The admin request is not valid."


class RouteNotFoundError(BrokerError):
    code, http_status, reason = -32075, 404, "ROUTE_NOT_FOUND"
    default_message = "No broker endpoint at this path."


class HTTPMethodNotAllowedError(BrokerError):
    code, http_status, reason = -32076, 405, "HTTP_METHOD_NOT_ALLOWED"
    transport_level = True  # an HTTP matter: the JSON-RPC binding answers it with 405 too
    default_message = "This HTTP method is not allowed at this path."


class AdminUnauthenticatedError(BrokerError):
    code, http_status, reason = -32077, 401, "ADMIN_UNAUTHENTICATED"
    transport_level = True
    default_message = "Missing or invalid admin credential (send 'Authorization: Bearer <token>')."


class AdminDisabledError(BrokerError):
    code, http_status, reason = -32078, 403, "ADMIN_DISABLED"
    default_message = "The admin API is disabled: no admin token is configured."


# --- Delegation governance (chain policy and cascade guards) ------------------------------------


class PolicyDeniedError(BrokerError):
    code, http_status, reason = -32085, 403, "POLICY_DENIED"
    default_message = "Policy does not allow this hop of the delegation chain."


class HopLimitExceededError(BrokerError):
    code, http_status, reason = -32086, 403, "HOP_LIMIT_EXCEEDED"
    default_message = "The delegation chain is already as deep as allowed."


class FanOutConcurrentExceededError(BrokerError):
    code, http_status, reason = -32087, 429, "FAN_OUT_CONCURRENT_EXCEEDED"
    retryable = True
    default_retry_after = 1.0
    default_message = "Too many delegations from this task are in flight; retry when some finish."


class FanOutTotalExceededError(BrokerError):
    code, http_status, reason = -32088, 403, "FAN_OUT_TOTAL_EXCEEDED"
    default_message = "This task has delegated as many times as allowed."


class TreeSizeExceededError(BrokerError):
    code, http_status, reason = -32089, 403, "TREE_SIZE_EXCEEDED"
    default_message = "The task tree has reached its maximum number of delegations."


class CycleDetectedError(BrokerError):
    code, http_status, reason = -32090, 403, "CYCLE_DETECTED"
    default_message = "The target agent is already in this delegation chain."


class TreeKilledError(BrokerError):
    code, http_status, reason = -32091, 403, "TREE_KILLED"
    default_message = "This task tree was stopped by an operator; no further delegation in it."


class BudgetExhaustedError(BrokerError):
    code, http_status, reason = -32092, 429, "BUDGET_EXHAUSTED"
    default_message = "A budget does not cover this call."  # metadata: scope, metric, window


class RateLimitedError(BrokerError):
    code, http_status, reason = -32093, 429, "RATE_LIMITED"
    retryable = True
    default_retry_after = 1.0
    default_message = "Too many requests; retry after the delay given."


# --- Visibility: metrics and the operator console ---------------------------------------------


class MetricsUnauthenticatedError(BrokerError):
    code, http_status, reason = -32094, 401, "METRICS_UNAUTHENTICATED"
    transport_level = True
    default_message = (
        "Missing or invalid metrics credential (send 'Authorization: Bearer <token>' with the "
        "metrics token or the admin token)."
    )


class ConsoleUnauthenticatedError(BrokerError):
    code, http_status, reason = -32095, 401, "CONSOLE_UNAUTHENTICATED"
    transport_level = True
    default_message = "Log in to the console first (or the admin token given was wrong)."


class ConsoleCsrfRejectedError(BrokerError):
    code, http_status, reason = -32096, 403, "CONSOLE_CSRF_REJECTED"
    transport_level = True
    default_message = "The form's CSRF token is missing or does not match this session."


class AlertNotFoundError(BrokerError):
    code, http_status, reason = -32097, 404, "ALERT_NOT_FOUND"
    transport_level = True
    default_message = "No kept alert has that id, or it was acknowledged already."


class BrokerInternalError(BrokerError):
    code, http_status, reason = -32603, 500, "INTERNAL_ERROR"
    domain = ERROR_DOMAIN_A2A  # the spec's code and reason
    default_message = "The broker hit an internal error; it has been logged."


def all_error_types() -> list[type[BrokerError]]:
    """Every concrete error class, for the uniqueness test and the error reference."""
    import broker.delegation.errors  # noqa: PLC0415 - defines the delegation refusals
    import broker.llm.errors  # noqa: PLC0415 - defines the LLM endpoint's refusals
    import broker.mcp.errors  # noqa: F401, PLC0415 - defines the MCP edge's refusals
    found: list[type[BrokerError]] = []
    pending: list[type[BrokerError]] = [BrokerError]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            found.append(sub)
            pending.append(sub)
    return sorted(found, key=lambda c: (c.code, c.reason))
