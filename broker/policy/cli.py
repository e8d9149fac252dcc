"""What ``a2a-broker policy check`` and ``a2a-broker policy explain`` do (argparse is broker.cli's).

Both read the model from ``model_path``; by default from ``model.conf`` beside the policy file if
there is one, else from the model shipped in ``policies/``.
They print for an operator and return the process exit code: 0 when the file is valid (check)
or every step of the chain is allowed (explain), 1 otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from broker.operations import OPERATIONS
from broker.policy.decision import Decision, RuleRef, operation_action
from broker.policy.engine import PolicyEngine
from broker.policy.rules import PolicyError

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
    message to an agent already in the chain, whether it may be re-entered.
    """
    if not chain:
        print("error: name at least the calling agent and the target", file=sys.stderr)
        return 1
    if operation not in OPERATIONS:
        print(f"error: unknown A2A operation {operation!r}", file=sys.stderr)
        return 1
    try:
        engine = PolicyEngine.from_files(model_path or _default_model(path), path)
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"policy {path} (version {engine.version[:12]})")
    ok = _show("originate", engine.may_originate(chain[0]), chain[:1])
    agents = [*chain, target]
    for index in range(len(chain)):
        ok = _explain_hop(engine, agents[: index + 1], agents[index + 1], operation, skill) and ok
    print("result: allowed" if ok else "result: DENIED")
    return 0 if ok else 1


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
    return decision.allowed


def _rule(rule: RuleRef | None) -> str:
    return f"line {rule.line}: {rule.text}" if rule is not None else "no rule allows it"


def _default_model(policy_path: str) -> str:
    beside = Path(policy_path).parent / "model.conf"
    return str(beside if beside.is_file() else SHIPPED_MODEL)
