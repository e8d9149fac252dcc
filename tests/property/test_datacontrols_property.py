"""Data controls under random texts, chunkings and chains.

* The streaming scanner finds exactly what a scan of the whole text finds, for any chunking,
  and releases the text unchanged and in order.
* Redaction never leaves a detected value in the output: re-scanning the redacted text finds
  none of the redacted values, and every planted value is gone.
* Pseudonyms come back: restoring a pseudonymised text gives the original, streamed or not.
* Tags never shrink: along any chain of hops the tags are a superset of every ancestor's, in
  the helper and in the tokens the broker mints.
"""

from __future__ import annotations

import itertools

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.datacontrols import DataControls, DataControlsSettings, Detector, Placeholders, Subject
from broker.datacontrols.findings import Finding
from broker.datacontrols.redact import StreamRestorer
from broker.datacontrols.stream import StreamScanner
from broker.datacontrols.tags import accumulate, only_grew
from broker.delegation.tokens import TokenMinter, TokenVerifier
from broker.identity.keys import BrokerKeys
from broker.settings_datacontrols import DataRule

DETECTOR = Detector.builtin()
KEY = "aB3dE5gH7jK9mN1pQ2rS4tU6vW8xY0zC2fG4"
VALUES = [
    "jane.doe@example.com",
    "ops+alerts@mail.example.co.uk",
    "+1 415 555 2671",
    "(201) 555-0123",
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
    "378282246310005",
    "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432",
    "536-90-4399",
    "390.533.447-05",
    "RCCMNL83S18D969H",
    "8.8.8.8",
    "2001:4860:4860::8888",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_" + KEY,
    "sk-proj-" + KEY + KEY,
    "sk-ant-api03-" + KEY + KEY,
    "xoxb-1234567890-" + KEY[:20],
    "AIza" + KEY[:35],
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----",
    'aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
    "AWS_SECRET:\n wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEZ",
]
# Fillers that look a little like values (digits, dots, dashes, @, colons, capitals, prefixes).
FILLERS = [
    "the",
    "report",
    "on",
    "2024-05-12",
    "at",
    "10:30",
    "v1.2",
    "order",
    "#58213",
    "EUR",
    "1,250.00",
    "task-management",
    "sk-",
    "ghp_",
    "AKIA",
    "eyJ",
    "-----",
    "@",
    "e-mail",
    "(see",
    "4.2)",
    "ID",
    "DE",
    "x",
    "IBAN",
    "::",
    "10.0.0.1",
    "Q3",
    "-",
    "+",
    "555",
    "<",
    "EMAIL_",
    "aws",
    "aws_secret",
    "AWS_SECRET=",
]
SEPARATORS = [" ", "\n", ", ", ". ", "; ", " (", ") ", ": ", "\t"]

pieces = st.one_of(st.sampled_from(VALUES), st.sampled_from(FILLERS))
texts = st.lists(st.tuples(pieces, st.sampled_from(SEPARATORS)), max_size=25).map(
    lambda items: "".join(p + s for p, s in items)
)
free_texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300
)


def chunked(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


def stream_scan(text: str, chunks: list[str]) -> tuple[str, list[Finding]]:
    scanner = StreamScanner(DETECTOR)
    out: list[str] = []
    found: list[Finding] = []
    for chunk in [*chunks, None]:
        base = scanner.released
        released, findings = scanner.feed(chunk) if chunk is not None else scanner.finish()
        out.append(released)
        found += [Finding(f.start + base, f.end + base, f.kind) for f in findings]
        assert scanner.held <= DETECTOR.max_len + 1
    return "".join(out), found


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts, st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_streaming_finds_what_the_whole_text_scan_finds(text: str, cuts: list[int]) -> None:
    released, found = stream_scan(text, chunked(text, cuts))

    assert released == text
    assert found == DETECTOR.scan(text)


@settings(max_examples=100, deadline=None)
@given(free_texts, st.lists(st.integers(min_value=0, max_value=400), max_size=20))
def test_streaming_any_text_one_character_at_a_time_or_cut_anywhere(
    text: str, cuts: list[int]
) -> None:
    for chunks in (list(text), chunked(text, cuts)):
        released, found = stream_scan(text, chunks)
        assert released == text
        assert found == DETECTOR.scan(text)


REDACT_ALL = DataControls(
    DataControlsSettings(enabled=True, rules=(DataRule(actions={"*": "redact"}),))
)
PSEUDONYMIZE_ALL = DataControls(
    DataControlsSettings(enabled=True, rules=(DataRule(actions={"*": "pseudonymize"}),))
)
REQUEST = Subject("request", "caller", agent="target")
RESPONSE = Subject("response", "caller", agent="target")


@settings(max_examples=300, deadline=None)
@given(texts)
def test_redaction_never_leaves_a_detected_value(text: str) -> None:
    detected = {text[f.start : f.end] for f in DETECTOR.scan(text)}

    redacted = REDACT_ALL.inspect_text(text, REQUEST).payload

    assert DETECTOR.scan(redacted) == []
    for value in detected:
        assert value not in redacted


@settings(max_examples=200, deadline=None)
@given(texts, st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_pseudonyms_are_restored_whole_and_streamed(text: str, cuts: list[int]) -> None:
    placeholders = Placeholders()
    hidden = PSEUDONYMIZE_ALL.inspect_text(text, REQUEST, placeholders).payload
    assert DETECTOR.scan(hidden) == []

    restorer = StreamRestorer(placeholders)
    streamed = "".join(restorer.feed(c) for c in chunked(hidden, cuts)) + restorer.finish()

    assert placeholders.restore(hidden) == text
    assert streamed == text


@settings(max_examples=100, deadline=None)
@given(texts, st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_a_streamed_answer_is_redacted_like_a_whole_one(text: str, cuts: list[int]) -> None:
    whole = REDACT_ALL.inspect_text(text, RESPONSE).payload
    stream = REDACT_ALL.text_stream(RESPONSE)

    streamed = "".join(stream.feed(c) for c in chunked(text, cuts)) + stream.finish()

    assert streamed == whole


TAG = st.sampled_from(
    ["pii:email", "pii:card", "pii:iban", "secret:jwt", "secret:aws_key", "pii:ip"]
)


@given(st.lists(st.lists(TAG, max_size=4), min_size=1, max_size=8))
def test_tags_never_shrink_along_a_chain(hops: list[list[str]]) -> None:
    tags: tuple[str, ...] = ()
    history = [tags]
    for found in hops:
        tags = accumulate(tags, found)
        history.append(tags)
    for i, earlier in enumerate(history):
        for later in history[i:]:
            assert only_grew(earlier, later)
    assert set(tags) == {t for found in hops for t in found}


KEYS = BrokerKeys(Ed25519PrivateKey.generate())


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(TAG, max_size=3), min_size=1, max_size=6))
def test_minted_tokens_never_lose_a_tag_down_a_chain(hops: list[list[str]]) -> None:
    minter = TokenMinter(KEYS, "https://broker.example", default_ttl_s=300)
    verifier = TokenVerifier(KEYS, "https://broker.example")
    agents = [f"agent{i}" for i in range(len(hops) + 1)]
    token, _ = minter.mint_origin(agents[0], agents[1], "a2a:SendMessage", tags=hops[0])
    parent = verifier.verify_presented(token, agents[1])
    for i, found in enumerate(hops[1:], start=1):
        token, _ = minter.mint_next(parent, agents[i], agents[i + 1], "a2a:SendMessage", tags=found)
        child = verifier.verify_presented(token, agents[i + 1])
        assert set(parent.tags) <= set(child.tags)
        assert set(found) <= set(child.tags)
        parent = child
