"""The order of each pipeline, fixed: moving a stage is a decision, recorded here and in
``broker/pipeline`` with its reason (docs/decisions/0031)."""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.approvals.a2a import A2aApprovals
from broker.approvals.desk import ApprovalDesk
from broker.audit.recorder import AuditRecorder
from broker.budgets.scopes import ConfiguredScopes
from broker.containment.global_kill import GlobalKillSwitch
from broker.datacontrols import DataControls, DataControlsSettings
from broker.delegation.tokens import TokenMinter, TokenVerifier
from broker.identity.keys import BrokerKeys
from broker.late_writes import LateWrites
from broker.mcp.servers import McpServerRegistry
from broker.mcp.sessions import Sealer, derive_seal_key
from broker.outbound.fake import FakeResponse, FakeTransport, answering
from broker.pipeline.a2a import A2aParts, a2a_stages, resume_stages
from broker.pipeline.llm import LlmParts, llm_stages
from broker.pipeline.mcp import McpParts, mcp_listen_stages, mcp_stages
from broker.policy.roles import AgentRoles
from broker.protocols.a2a.task_pages import PageTokens
from broker.protocols.llm.catalog import ModelCatalog
from broker.settings import ServerSettings, Settings
from broker.settings_approvals import ApprovalSettings
from broker.stages.authenticate import Authenticate
from broker.stages.responses import ResponseInspector
from broker.stores.memory import MemoryBackend

KEYS = BrokerKeys(Ed25519PrivateKey.generate())
SETTINGS = Settings(server=ServerSettings(public_url="http://broker.test"))


async def _nothing() -> None:
    return None


async def _allowed(_: str) -> None:
    return None


def _parts() -> tuple[A2aParts, LlmParts]:
    stores = MemoryBackend().stores()
    audit = AuditRecorder(None)
    authenticate = Authenticate(stores.credentials, stores.registry)
    verifier = TokenVerifier(KEYS, SETTINGS.public_url)
    transport = FakeTransport(answering(FakeResponse()))
    kill = GlobalKillSwitch(stores.kill_switch, _nothing)
    pages = PageTokens(KEYS)
    a2a = A2aParts(
        settings=SETTINGS,
        stores=stores,
        audit=audit,
        authenticate=authenticate,
        policy=None,
        minter=TokenMinter(KEYS, SETTINGS.public_url, 60),
        verifier=verifier,
        roles=AgentRoles(None),
        budget_scopes=ConfiguredScopes(SETTINGS.budgets, stores.budget_limits),
        late_writes=LateWrites(()),
        kill=kill,
        transport=transport,
        inspector=ResponseInspector(stores.task_routes, 60, lambda card, _: card, pages),
        pages=pages,
        push_url_allowed=_allowed,
    )
    llm = LlmParts(
        llm=SETTINGS.llm,
        limits=SETTINGS.limits,
        authenticate=authenticate,
        policy=None,
        verifier=verifier,
        revocations=stores.revocations,
        client=transport,
        ledger=stores.budgets,
        limiter=stores.rate_limiter,
        scopes=a2a.budget_scopes,
        audit=audit,
        kill=kill,
    )
    return a2a, llm


def _names(stages: list[object]) -> list[str]:
    return [type(stage).__name__ for stage in stages]


def test_the_a2a_pipeline_runs_its_stages_in_this_order() -> None:
    a2a, _ = _parts()
    assert _names(list(a2a_stages(a2a))) == [
        "ErrorBoundary",  # outermost: every refusal in the binding's shape, audited; one log line
        "Authenticate",  # before anything costs a store read beyond the credential
        "ParseRequest",
        "RefuseWhileKilled",  # once the operation is known (CancelTask passes)
        "ResolveTarget",
        "PushSupport",
        "ReadParams",
        "DelegationContext",
        "ChainPolicy",  # before anything that counts or spends
        "AgentContainment",
        "CascadeGuards",
        "TaskScope",
        "MintHopToken",
        "HopBudget",  # last check: a refused hop spends nothing
        "AuditForward",  # every decision made: durable before anything leaves
        "Forward",  # innermost
    ]


def test_the_llm_pipeline_runs_its_stages_in_this_order() -> None:
    _, llm = _parts()
    assert _names(list(llm_stages(llm, ModelCatalog(llm.llm)))) == [
        "ErrorBoundary",  # the same boundary, with the LLM's ends: refusals audited once
        "Authenticate",
        "RefuseWhileKilled",
        "ParseLlmRequest",
        "DelegationContext",
        "ModelPolicy",
        "AgentRateLimit",
        "ProviderBreaker",
        "MeterBudget",
        "AuditForward",
        "ForwardToProvider",
    ]


def test_both_pipelines_share_the_stages_every_protocol_needs() -> None:
    """Written once: the same stage classes (and the one authenticator) in both chains."""
    a2a, llm = _parts()
    a2a_chain = list(a2a_stages(a2a))
    llm_chain = list(llm_stages(llm, ModelCatalog(llm.llm)))
    shared = {
        "ErrorBoundary", "Authenticate", "RefuseWhileKilled", "DelegationContext", "AuditForward"
    }
    assert shared <= set(_names(a2a_chain)) & set(_names(llm_chain))
    assert a2a.authenticate in a2a_chain and llm.authenticate in llm_chain


def test_data_controls_scan_requests_before_the_token_and_answers_inside_the_audit() -> None:
    """With [datacontrols] on, both pipelines gain the same two stages: the request's scan
    after policy and guards and before the token and budget; the answer's inside the audit."""
    a2a, llm = _parts()
    data = DataControls(DataControlsSettings(enabled=True))
    a2a_names = _names(list(a2a_stages(dataclasses.replace(a2a, datacontrols=data))))
    llm_names = _names(
        list(llm_stages(dataclasses.replace(llm, datacontrols=data), ModelCatalog(llm.llm)))
    )
    assert a2a_names[a2a_names.index("TaskScope") :] == [
        "TaskScope",
        "ScanRequest",  # its tags go into the token minted next
        "MintHopToken",
        "HopBudget",
        "AuditForward",
        "ScanAnswer",  # the outcome record covers what the caller got
        "Forward",
    ]
    assert llm_names[llm_names.index("ProviderBreaker") :] == [
        "ProviderBreaker",
        "ScanRequest",
        "MeterBudget",
        "AuditForward",
        "ScanAnswer",
        "ForwardToProvider",
    ]


def _mcp_parts() -> McpParts:
    a2a, _ = _parts()
    return McpParts(
        settings=SETTINGS,
        stores=a2a.stores,
        audit=a2a.audit,
        authenticate=a2a.authenticate,
        policy=None,
        minter=a2a.minter,
        verifier=a2a.verifier,
        roles=a2a.roles,
        budget_scopes=a2a.budget_scopes,
        kill=a2a.kill,
        transport=a2a.transport,
        registry=McpServerRegistry(a2a.transport.egress.check_url),
        sealer=Sealer([derive_seal_key(b"order")]),
    )


def test_the_mcp_pipeline_runs_its_stages_in_this_order() -> None:
    assert _names(list(mcp_stages(_mcp_parts()))) == [
        "ErrorBoundary",  # every refusal an MCP JSON-RPC error and one record, one log line
        "Authenticate",
        "RefuseWhileKilled",
        "ParseMcpRequest",  # the one reading, before anything is looked up for it
        "ResolveMcpServer",  # the virtual server's calls routed: judged as the server's
        "McpSession",
        "DelegationContext",
        "McpPolicy",  # before anything that counts or spends
        "McpGuards",
        "MintMcpHopToken",
        "McpToolBudget",  # last check: a refused call spends nothing
        "AuditForward",  # every decision made: durable before anything leaves
        "ForwardMcp",  # innermost
    ]


def test_the_mcp_pipeline_shares_the_stages_every_protocol_needs() -> None:
    parts = _mcp_parts()
    chain = list(mcp_stages(parts))
    assert {"Authenticate", "RefuseWhileKilled", "DelegationContext", "AuditForward"} <= set(
        _names(chain)
    )
    assert parts.authenticate in chain


def test_the_mcp_servers_own_stream_runs_the_same_ends_without_a_budget() -> None:
    parts = _mcp_parts()
    chain = list(mcp_listen_stages(parts))
    assert _names(chain) == [
        "ErrorBoundary",
        "Authenticate",
        "RefuseWhileKilled",
        "ReadMcpListen",  # the sealed session, before the delegation token is verified
        "DelegationContext",
        "McpListenPolicy",
        "MintMcpHopToken",
        "AuditForward",  # the decision durable before the stream opens
        "ForwardMcpListen",
    ]
    assert parts.authenticate in chain


def _with_approvals() -> tuple[A2aParts, LlmParts]:
    a2a, llm = _parts()
    desk = ApprovalDesk(
        a2a.stores.approvals, ApprovalSettings(), a2a.audit, a2a.stores.registry,
        a2a.stores.revocations,
    )  # fmt: skip
    approvals = A2aApprovals(desk, a2a.stores.task_routes, 15)
    return dataclasses.replace(a2a, approvals=approvals), dataclasses.replace(llm, approvals=desk)


def test_approval_waits_for_every_automatic_check_and_comes_before_token_and_budget() -> None:
    a2a, llm = _with_approvals()
    names = _names(list(a2a_stages(a2a)))
    at = names.index("TaskScope")
    assert names[at : at + 5] == [
        "TaskScope", "ApprovalTasks", "TreeBudgetThreshold", "RequireApproval", "MintHopToken",
    ]
    llm_names = _names(list(llm_stages(llm, ModelCatalog(llm.llm))))
    at = llm_names.index("MeterBudget")
    assert llm_names[at : at + 5] == [
        "MeterBudget", "CostOverThreshold", "TreeBudgetThreshold", "RequireApproval",
        "AuditForward",
    ]


def test_an_approved_call_goes_through_every_check_again_but_not_the_callers_identity() -> None:
    a2a, _ = _with_approvals()
    resumed = _names(resume_stages(list(a2a_stages(a2a))))
    assert resumed[0] == "ParseRequest" and resumed[-1] == "Forward"
    assert {"ErrorBoundary", "Authenticate", "DelegationContext"}.isdisjoint(resumed)
    assert {"ChainPolicy", "CascadeGuards", "RequireApproval", "HopBudget"} <= set(resumed)
