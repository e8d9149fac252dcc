"""What ``a2a-broker policy check`` and ``policy explain`` do (argparse: ``broker.cli.policy``).

Both read the model from ``model_path``; by default from ``model.conf`` beside the policy file if
there is one, else from the model shipped in ``policies/``.
They print for an operator and return the process exit code: 0 when the file is valid (check)
or every step of the chain is allowed (explain), 1 otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from broker.policy.decision import Decision, RuleRef, operation_action
from broker.policy.engine import PolicyEngine
from broker.policy.rules import LLM_ACTIONS, MODEL_PREFIX, PolicyError
from broker.protocols.a2a.operations import OPERATIONS

_LLM_CALLS = ", ".join(sorted(a for a in LLM_ACTIONS if not a.endswith("*")))
_HELD: list[str] = []  # the hops of the chain being explained that wait for approval
SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "policies" / "model.conf"


def check(path: str, model_path: str | None = None) -> int:
    """Validate a policy file: print ``ok: N rules, version V`` or ``file:line: error``."""
    try:
        engine = PolicyEngine.from_files(model_path or _default_model(path), path)
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"ok: {engine.snapshot.rule_count} rules, version {engine.version}")
    return 0


def explain(
    path: str,
    chain: Sequence[str],
    target: str,
    operation: str,
    skill: str,
    *,
    model_path: str | None = None,
) -> int:
    """Print the decision for every hop of ``chain`` + ``target``, each with its deciding rule.

    ``explain(p, ["a", "b"], "c", ...)`` (the CLI's ``policy explain a b c``) decides a -> b with
    chain [a], then b -> c with chain [a, b]; it first asks whether ``a`` may originate, and for a
    message to an agent already in the chain, whether it may be re-entered. A ``target`` of
    ``model:NAME`` with ``operation`` ``llm:chat`` or ``llm:embeddings`` explains an LLM call:
    the hops before it are the messages that built the chain (``SendMessage`` on ``skill``), and
    a direct LLM call needs no ``originate``, as in the broker.
    """
    problem = _operation_problem(chain, target, operation)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    try:
        engine = PolicyEngine.from_files(model_path or _default_model(path), path)
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"policy {path} (version {engine.version[:12]})")
    agents = [*chain, target]
    ok = True
    _HELD.clear()
    if not agents[1].startswith(MODEL_PREFIX):  # the first hop is an A2A message
        ok = _show("originate", engine.may_originate(chain[0]), chain[:1])
    for index in range(len(chain)):
        hop_target = agents[index + 1]
        if hop_target.startswith(MODEL_PREFIX):
            ok = _explain_llm_call(engine, agents[: index + 1], hop_target, operation) and ok
            continue
        hop_operation = "SendMessage" if operation in LLM_ACTIONS else operation
        ok = _explain_hop(engine, agents[: index + 1], hop_target, hop_operation, skill) and ok
    held = " after a human's approval (hop " + ", ".join(_HELD) + ")" if _HELD else ""
    print(f"result: allowed{held}" if ok else "result: DENIED")
    return 0 if ok else 1


def _operation_problem(chain: Sequence[str], target: str, operation: str) -> str | None:
    """Why ``chain`` -> ``target`` doing ``operation`` cannot be explained (None: it can)."""
    if not chain:
        return "name at least the calling agent and the target"
    if any(agent.startswith(MODEL_PREFIX) for agent in chain):
        return "a model can only be the last of the chain (the target of an LLM call)"
    if target.startswith(MODEL_PREFIX):
        wrong = operation not in LLM_ACTIONS or operation.endswith("*")
        return f"the target {target} is a model: give --operation {_LLM_CALLS}" if wrong else None
    if operation in LLM_ACTIONS:
        return f"{operation} is an LLM call: its target is model:NAME, not {target!r}"
    if operation not in OPERATIONS:
        return (
            f"unknown A2A operation {operation!r} (valid: {', '.join(OPERATIONS)};"
            f" for LLM calls {_LLM_CALLS} with a model:NAME target)"
        )
    return None


def _explain_llm_call(
    engine: PolicyEngine, chain: Sequence[str], model: str, action: str
) -> bool:
    print(f"hop {len(chain)}: {chain[-1]} -> {model}  {action}  chain [{', '.join(chain)}]")
    return _show("call", engine.decide_chain(chain, model, action), chain)


def _explain_hop(
    engine: PolicyEngine, chain: Sequence[str], target: str, operation: str, skill: str
) -> bool:
    act = operation_action(operation, skill)
    caller = chain[-1]
    print(f"hop {len(chain)}: {caller} -> {target}  {act}  chain [{', '.join(chain)}]")
    ok = True
    if OPERATIONS[operation].sends_message and target in chain:
        ok = _show(f"re-enter {target}", engine.may_reenter(caller, target), chain)
    return _show("hop", engine.decide_chain(chain, target, act), chain) and ok


def _show(what: str, decision: Decision, chain: Sequence[str]) -> bool:
    """Print a decision: the verdict, whose rule decided it, and the chain's rule if any."""
    status = "allowed" if decision.allowed else f"DENIED ({decision.reason})"
    role = "caller" if decision.principal == chain[-1] else "origin"
    print(f"  {what}: {status}; {role} {decision.principal}: {_rule(decision.rule)}")
    if decision.chain_rule is not None:
        how = f"{chain[-1]} may delegate" if decision.delegated else f"origin {chain[0]}"
        print(f"    and {how}: {_rule(decision.chain_rule)}")
    if decision.needs_approval:
        _HELD.append(str(len(chain)))
        whose = "caller" if decision.approval_principal == chain[-1] else "origin"
        print(
            f"    APPROVAL REQUIRED: {whose} {decision.approval_principal}:"
            f" {_rule(decision.approval)} (deny beats approve, approve beats allow)"
        )
    return decision.allowed


def _rule(rule: RuleRef | None) -> str:
    return f"line {rule.line}: {rule.text}" if rule is not None else "no rule allows it"


def _default_model(policy_path: str) -> str:
    beside = Path(policy_path).parent / "model.conf"
    return str(beside if beside.is_file() else SHIPPED_MODEL)
