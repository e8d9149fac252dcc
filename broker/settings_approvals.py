"""The ``[approvals]`` section: human approval of calls the policy marks ``approve``
(docs/approvals.md)."""

from __future__ import annotations

from typing import Annotated

import msgspec


class ApproverSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A person who may decide approvals: their personal token, as its SHA-256 hex digest."""

    token_sha256: str = ""


class ApprovalWebhookSettings(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True
):
    """Where each new approval request (and each decision) is POSTed as JSON."""

    # "" sends nothing. The URL passes the broker's egress rules like every outbound call.
    url: str = ""
    # The environment variable holding the HMAC-SHA256 key; the body's signature goes in the
    # header A2A-Broker-Signature as "t=<unix time>,v1=<hex>", as on every broker webhook.
    key_env: str = ""
    # Attempts per notification (1 = no retry), with doubling back-off from one second.
    attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 5
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0


class ApprovalSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Human approval of the calls the policy marks ``approve``, and of costly ones."""

    # How long a request waits for its decision before it expires (and its task fails).
    ttl_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0
    # How many distinct approvers must approve; one deny decides at once.
    quorum: Annotated[int, msgspec.Meta(ge=1, le=10)] = 1
    # A decided approval (and the answer of the approved call) is kept this long for GetTask.
    retain_s: Annotated[float, msgspec.Meta(gt=0)] = 86400.0
    # An LLM call whose reserved worst-case cost passes this many USD needs approval (0: never).
    llm_cost_over_usd: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # A delegated call that would take its task tree past this percentage of one of the tree's
    # budgets needs approval (0: never).
    tree_budget_percent: Annotated[float, msgspec.Meta(ge=0, le=100)] = 0.0
    # The Retry-After (seconds) of an LLM call refused as APPROVAL_PENDING.
    llm_retry_after_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # Who may decide, by name: a name that is also an agent in a request's chain is refused.
    approvers: dict[str, ApproverSettings] = msgspec.field(default_factory=dict)
    webhook: ApprovalWebhookSettings = msgspec.field(default_factory=ApprovalWebhookSettings)
