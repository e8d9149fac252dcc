"""What data controls cost the broker: µs per KB scanned, and a 2 KB message with nothing found.

    .venv/bin/python benchmarks/datacontrols_costs.py [--number N]

Prints µs per operation (best of 5 runs of N, one process, one core) for:

* a 2 KB A2A message of English prose with the usual numbers (dates, amounts, an order number,
  a version, a time) and nothing to find: the cost of a hop with controls on and no finding
  (target < 50 µs);
* scans of 1 KB and 64 KB of that prose, as µs per KB;
* a 2 KB message holding one of each of several types, redacted (what finding costs);
* the same 2 KB fed to the streaming scanner in 16-character chunks (an LLM's deltas);
* a 2 KB OpenAI chat request with nothing found;
* a reference: one Ed25519 signature (34 µs on an idle core of the reference machine), to read
  the other figures on a busy or slower machine.
"""

from __future__ import annotations

import argparse
import random
import timeit
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.datacontrols import DataControls, DataControlsSettings, DataRule, Subject

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
    return min(timeit.repeat(run, number=number, repeat=5)) / number * 1e6


def a2a_params(text: str) -> dict[str, object]:
    return {
        "message": {
            "role": "ROLE_USER",
            "messageId": "m-1",
            "parts": [{"text": text}],
            "metadata": {"skill": "report"},
        }
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=2000)
    number = parser.parse_args().number

    controls = DataControls(
        DataControlsSettings(enabled=True, rules=(DataRule(actions={"*": "redact"}),))
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
