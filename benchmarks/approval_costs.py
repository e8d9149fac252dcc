"""What human approval costs a hop that needs none, and what holding a call costs.

    .venv/bin/python -m benchmarks.approval_costs [--number N]

Prints CPU µs per operation (best of 5 runs of N, one process):

* a warm chain decision (``PolicyEngine.decide_chain``, answered from the cache) under a policy
  of 100 filler rules, without and with ``approve`` rules (the hop asked matches none of them);
* the approval stages of the A2A pipeline (broker-owned tasks, tree threshold, approval) around
  a fake ``call_next``, for a hop without an approve rule, and how many store calls they made
  (the claim: none);
* holding a call (a new approval on the memory store, the broker-owned task answered), for
  comparison;
* a reference: one Ed25519 signature, to read the figures on a busy or slower machine.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import timeit
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.approvals.a2a import A2aApprovals, ApprovalTasks
from broker.approvals.desk import ApprovalDesk
from broker.approvals.stages import RequireApproval, TreeBudgetThreshold
from broker.audit.recorder import AuditRecorder
from broker.pipeline.stage import fold
from broker.policy.engine import PolicyEngine
from broker.protocols.a2a.operations import SEND_MESSAGE
from broker.protocols.a2a.reading import Reading
from broker.settings_approvals import ApprovalSettings
from broker.stores.memory import MemoryBackend
from broker.types import AgentRecord, MediationContext, Outcome, Reply

MODEL = (Path(__file__).resolve().parents[1] / "policies" / "model.conf").read_text()
FILLER = "".join(f"p, filler{i}, group:g{i % 7}, SendMessage:s{i}, allow\n" for i in range(100))
BASE = (
    "g, alice, role:user\ng2, echo, group:workers\n" + "".join(
        f"g2, agent{i}, group:g{i}\n" for i in range(7)
    ) + "p, role:user, *, originate, allow\np, role:user, group:workers, SendMessage:*, allow\n"
)
APPROVE = "p, role:user, group:workers, SendMessage:delete-data, approve\n"


class Counting:
    """A store proxy that counts the calls made to it."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    def __getattr__(self, name: str) -> Any:
        self.calls += 1
        return getattr(self.inner, name)


def best_us(run: Any, number: int) -> float:
    started = [time.process_time()]

    def timed() -> float:
        started[0] = time.process_time()
        for _ in range(number):
            run()
        return time.process_time() - started[0]

    return min(timed() for _ in range(5)) / number * 1e6


def decisions(number: int) -> dict[str, float]:
    out = {}
    policies = (("no approve rule", BASE + FILLER), ("with approve rules", BASE + FILLER + APPROVE))
    for label, text in policies:
        engine = PolicyEngine(MODEL)
        engine.swap(engine.load_text(text, "p.csv"))

        def decide(e: PolicyEngine = engine) -> None:
            e.decide_chain(("alice",), "echo", "SendMessage:read")

        decide()
        out[label] = best_us(decide, number)
    return out


def context(rule: str = "") -> MediationContext:
    async def body() -> bytes:
        return b""

    ctx = MediationContext("jsonrpc", "echo", "POST", headers={}, read_body=body, caller="alice")
    ctx.operation, ctx.chain, ctx.reading = SEND_MESSAGE, ("alice",), Reading()
    ctx.target = AgentRecord(name="echo", card_json="{}")
    ctx.body, ctx.jsonrpc_id = b'{"jsonrpc":"2.0","id":1}', msgspec.Raw(b"1")
    ctx.approval_rule = rule
    return ctx


def stages(number: int) -> dict[str, float]:
    stores = MemoryBackend().stores()
    approvals_store, budgets = Counting(stores.approvals), Counting(stores.budgets)
    desk = ApprovalDesk(approvals_store, ApprovalSettings(), AuditRecorder(None), stores.registry,
                        stores.revocations)
    approvals = A2aApprovals(desk, stores.task_routes, 15)

    async def answer(_: MediationContext) -> Outcome:
        return Reply(200, b"{}")

    async def scopes(_: MediationContext, __: str) -> tuple[Any, ...]:
        return ()

    chain = fold([
        ApprovalTasks(approvals),
        TreeBudgetThreshold[MediationContext](budgets, 0, lambda _: None, scopes),
        RequireApproval[MediationContext](desk, approvals),
        lambda ctx, _: answer(ctx),
    ])
    loop = asyncio.new_event_loop()
    passing = best_us(lambda: loop.run_until_complete(chain(context())), number)
    store_calls = approvals_store.calls + budgets.calls
    held = best_us(lambda: loop.run_until_complete(chain(context("p, …, approve"))), number // 10)
    bare = best_us(lambda: loop.run_until_complete(answer(context())), number)
    loop.close()
    return {"passing": passing - bare, "store calls": float(store_calls), "held": held - bare}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000)
    number = parser.parse_args().number
    key = Ed25519PrivateKey.generate()
    sign = min(timeit.repeat(lambda: key.sign(b"x" * 64), number=2000, repeat=5)) / 2000 * 1e6
    for label, us in decisions(number).items():
        print(f"warm chain decision, {label}: {us:.2f} µs")
    found = stages(number)
    print(f"approval stages, hop without approve rule: {found['passing']:.2f} µs "
          f"({found['store calls']:.0f} store calls)")
    print(f"holding a call (memory store, task answered): {found['held']:.1f} µs")
    print(f"reference: Ed25519 sign {sign:.1f} µs")


if __name__ == "__main__":
    main()
