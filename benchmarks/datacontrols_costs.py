"""What data controls cost the broker: µs per KB scanned, and a 2 KB message with nothing found.

    .venv/bin/python benchmarks/datacontrols_costs.py [--number N]

Prints CPU µs per operation (best of 5 runs of N, one process) for:

* a 2 KB A2A message of English prose with the usual numbers (dates, amounts, an order number,
  a version, a time) and nothing to find: the cost of a hop with controls on and no finding
  (target < 50 µs);
* scans of 1 KB and 64 KB of that prose, as µs per KB;
* a 2 KB message holding one of each of several types, redacted (what finding costs);
* the same 2 KB fed to the streaming scanner in 16-character chunks (an LLM's deltas);
* a 2 KB OpenAI chat request with nothing found;
* the pipeline stages themselves (``broker.stages.datacontrols``) around a fake ``call_next``,
  nothing found: an A2A hop's request (the JSON-RPC body decoded, scanned, the flow rules
  checked twice) and its 2 KB unary answer, and an LLM call's 2 KB prompt;
* a reference: one Ed25519 signature (34 µs on an idle core of the reference machine), to read
  the other figures on a busy or slower machine.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import timeit
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.datacontrols import DataControls, DataControlsSettings, DataRule, FlowRule, Subject
from broker.llm.context import LlmContext
from broker.llm.datacontrols import LlmDataView
from broker.protocols.a2a.operations import SEND_MESSAGE
from broker.protocols.llm.request import parse_request
from broker.stages.datacontrols import ScanAnswer, ScanRequest
from broker.stages.datacontrols_a2a import A2aDataView
from broker.types import MediationContext, Outcome, Reply

PROSE = (
    "Thanks for the update on the migration plan. The team reviewed the draft on 2024-05-12 at "
    "10:30 and agreed to move the reporting service first. Order 58213 covers the new hardware, "
    "which costs 1,250.00 EUR in total; the vendor expects payment within 30 days. Version 2.4 "
    "of the client ships next week, after the load test on Thursday. Please check section 4.2 "
    "of the runbook before the change window, and tell the on-call engineer if the error rate "
    "goes above 0.5% for more than five minutes. We will meet again in Q3 to review the budget "
    "and the staffing for the second half of the year. "
)
FINDINGS = (
    "Contact jane.doe@example.com or +1 415 555 2671; card 4111 1111 1111 1111, IBAN "
    "DE89 3704 0044 0532 0130 00, key AKIAIOSFODNN7EXAMPLE, server 8.8.8.8. "
)


REFERENCE_SIGN_US = 34.0


def prose(chars: int, seed: int = 1) -> str:
    rng = random.Random(seed)  # shuffled sentences, so no two KB are the same text
    sentences = [s.strip() + "." for s in PROSE.split(". ") if s.strip()]
    out = ""
    while len(out) < chars:
        out += " ".join(rng.sample(sentences, len(sentences))) + " "
    return out[:chars]


def per_op_us(run: Callable[[], object], number: int) -> float:
    """CPU µs per call, best of 5 runs: CPU time, not wall time, so that other work on a
    shared machine counts less (it still costs caches and frequency)."""
    runs = timeit.repeat(run, number=number, repeat=5, timer=time.process_time)
    return min(runs) / number * 1e6


def a2a_params(text: str) -> dict[str, object]:
    return {
        "message": {
            "role": "ROLE_USER",
            "messageId": "m-1",
            "parts": [{"text": text}],
            "metadata": {"skill": "report"},
        }
    }


async def _no_body() -> bytes:
    return b""


def drive(stage: Any, ctx: Any, answer: Outcome) -> None:
    """Run a stage to its end without an event loop: nothing in it waits on I/O."""

    async def call_next(_: Any) -> Outcome:
        return answer

    coroutine = stage(ctx, call_next)
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise RuntimeError("the stage waited on something")


def stage_rows(controls: DataControls, text: str, number: int) -> list[tuple[str, float]]:
    """The stages around a fake ``call_next``, per call: A2A request, A2A answer, LLM prompt."""
    params = a2a_params(text)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": params})
    result = {"task": {"id": "t", "artifacts": [{"artifactId": "a", "parts": [{"text": text}]}]}}
    answer = Reply(200, json.dumps({"jsonrpc": "2.0", "id": 1, "result": result}).encode())
    chat = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
    request, reply = ScanRequest(controls, A2aDataView()), ScanAnswer(controls, A2aDataView())
    llm = ScanRequest(controls, LlmDataView())

    def a2a_ctx() -> MediationContext:
        ctx = MediationContext("jsonrpc", "writer", "POST", headers={}, read_body=_no_body)
        ctx.caller, ctx.operation, ctx.body = "planner", SEND_MESSAGE, body.encode()
        return ctx

    def llm_ctx() -> LlmContext:
        ctx = LlmContext(kind="chat", headers={}, read_body=_no_body, caller="planner")
        ctx.request = parse_request(
            "chat", chat, max_depth=32, default_max_tokens=16, max_tokens_limit=0
        )
        return ctx

    empty = Reply(200, b"{}")
    return [
        (
            "stage: A2A hop's 2 KB request, nothing found",
            per_op_us(lambda: drive(request, a2a_ctx(), empty), number),
        ),
        (
            "stage: A2A hop's 2 KB unary answer, nothing found",
            per_op_us(lambda: drive(reply, a2a_ctx(), answer), number),
        ),
        (
            "stage: LLM call's 2 KB prompt, nothing found",
            per_op_us(lambda: drive(llm, llm_ctx(), empty), number),
        ),
        ("(a context built, no stage: subtracted above)", per_op_us(a2a_ctx, number)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=2000)
    number = parser.parse_args().number

    controls = DataControls(
        DataControlsSettings(
            enabled=True,
            rules=(DataRule(actions={"*": "redact"}),),
            flows=(FlowRule(tags=("secret:*",), models=("external/*",)),),
        )
    )
    request = Subject("request", "planner", agent="writer", skill="report")
    clean_2k = a2a_params(prose(2048))
    kb_1, kb_64 = prose(1024, seed=2), prose(64 * 1024, seed=3)
    found_2k = a2a_params((FINDINGS + prose(2048))[:2048])
    chat = {"model": "m", "messages": [{"role": "user", "content": prose(2048, seed=4)}]}
    assert controls.inspect_a2a(clean_2k, request).found == {}
    assert controls.inspect_a2a(found_2k, request).found

    def stream_2k() -> None:
        stream = controls.text_stream(Subject("response", "planner", agent="writer"))
        text = clean_2k["message"]["parts"][0]["text"]  # type: ignore[index]
        for i in range(0, len(text), 16):
            stream.feed(text[i : i + 16])
        stream.finish()

    key = Ed25519PrivateKey.generate()
    reference = per_op_us(lambda: key.sign(b"x" * 100), number)
    rows = [
        (
            "2 KB A2A message, nothing found",
            per_op_us(lambda: controls.inspect_a2a(clean_2k, request), number),
        ),
        ("scan 1 KB of prose (µs per KB)", per_op_us(lambda: controls.detector.scan(kb_1), number)),
        (
            "scan 64 KB of prose, per KB",
            per_op_us(lambda: controls.detector.scan(kb_64), max(1, number // 64)) / 64,
        ),
        (
            "2 KB A2A message, 6 values redacted",
            per_op_us(lambda: controls.inspect_a2a(found_2k, request), number),
        ),
        ("2 KB streamed in 16-char chunks", per_op_us(stream_2k, max(1, number // 10))),
        (
            "2 KB OpenAI chat request, nothing found",
            per_op_us(lambda: controls.inspect_chat_request(chat, request), number),
        ),
        *stage_rows(controls, prose(2048), number),
    ]
    # How fast the machine is now: one Ed25519 signature takes 34 µs on an idle core of the
    # reference machine; measured before and after the rows, the faster of the two is used.
    reference = min(reference, per_op_us(lambda: key.sign(b"x" * 100), number))
    scale = REFERENCE_SIGN_US / reference
    width = max(len(name) for name, _ in rows)
    print(f"{'':<{width}}  {'measured':>10}  {'at reference speed':>18}")
    for name, us in rows:
        print(f"{name:<{width}}  {us:8.1f} µs  {us * scale:15.1f} µs")
    print(
        f"{'reference: Ed25519 sign':<{width}}  {reference:8.1f} µs  {REFERENCE_SIGN_US:15.1f} µs"
    )


if __name__ == "__main__":
    main()
