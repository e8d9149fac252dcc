"""The detector's shortcuts find exactly what its plain searches find.

The fast path skips a gated recognizer when the text lacks its gates' rarest shared character,
and searches the clusters of digits in the text's ASCII bytes, digits made one literal, keeping
only clusters long enough for a value. ``Detector(..., fast=False)`` runs the plain searches;
for texts holding planted valid values of every type among look-alike fillers, and for any
text at all, both give the same findings, and every planted value is found.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from broker.datacontrols.detector import (
    Detector,
    DetectorOptions,
    builtin_recognizers,
    dense_runs,
    dense_runs_reference,
    needle,
)
from broker.datacontrols.national_ids import checked_ids

KEY = "aB3dE5gH7jK9mN1pQ2rS4tU6vW8xY0zC2fG4"
# One valid value of every type, each national id included (kind, value).
VALUES = [
    ("pii:email", "jane.doe@example.com"),
    ("pii:email", "ops+alerts@mail.example.co.uk"),
    ("pii:phone", "+1 415 555 2671"),
    ("pii:phone", "(201) 555-0123"),
    ("pii:phone", "+44 20 7946 0958"),
    ("pii:phone", "020 7946 0958"),
    ("pii:card", "4111 1111 1111 1111"),
    ("pii:card", "378282246310005"),
    ("pii:card", "5555-5555-5555-4444"),
    ("pii:iban", "DE89 3704 0044 0532 0130 00"),
    ("pii:iban", "GB82WEST12345698765432"),
    ("pii:national_id", "536-90-4399"),
    ("pii:national_id", "390.533.447-05"),
    ("pii:national_id", "RCCMNL83S18D969H"),
    ("pii:national_id", "12345678Z"),
    ("pii:national_id", "X-2482300-W"),
    ("pii:national_id", "2 95 10 99 126 111 93"),
    ("pii:national_id", "880320-0016"),
    ("pii:national_id", "211062-5629"),
    ("pii:national_id", "2341 2341 2346"),
    ("pii:national_id", "36 574 261 809"),
    ("pii:national_id", "1112.22.333"),
    ("pii:national_id", "44051401458"),
    ("pii:ip", "8.8.8.8"),
    ("pii:ip", "10.0.0.1"),
    ("pii:ip", "2001:4860:4860::8888"),
    ("secret:aws_key", "AKIAIOSFODNN7EXAMPLE"),
    ("secret:github_token", "ghp_" + KEY),
    ("secret:github_token", "github_pat_" + (KEY + KEY + KEY)[:82]),
    ("secret:gitlab_token", "glpat-" + KEY[:20]),
    ("secret:openai_key", "sk-proj-" + KEY + KEY),
    ("secret:anthropic_key", "sk-ant-api03-" + KEY + KEY),
    ("secret:slack_token", "xoxb-1234567890-" + KEY[:20]),
    ("secret:stripe_key", "sk_live_" + KEY[:24]),
    ("secret:google_api_key", "AIza" + KEY[:35]),
    ("secret:google_oauth_secret", "GOCSPX-" + KEY[:28]),
    ("secret:npm_token", "npm_" + KEY),
    ("secret:huggingface_token", "hf_" + "abcdefghijABCDEFGHIJabcdefghijABCD"),
    ("secret:sendgrid_key", "SG." + KEY[:22] + "." + (KEY + KEY)[:43]),
    ("secret:slack_webhook", "https://hooks.slack.com/services/T0000/B0000/" + KEY[:24]),
    (
        "secret:jwt",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ),
    (
        "secret:private_key",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----",
    ),
    ("secret:aws_secret", 'aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"'),
]
# Prose and look-alikes: dates, times, amounts, versions, prefixes, capitals, non-ASCII.
FILLERS = [
    "the report",
    "on 2024-05-12 at 10:30",
    "12/05/2024",
    "2024.5.12",
    "v1.2.3",
    "order #58213",
    "1,250.00 EUR",
    "tâche № 7",
    "Größe 1234567",
    "電話 12 34",
    "task-management",
    "sk-",
    "ghp_",
    "AKIA",
    "eyJ",
    "-----",
    "@",
    "(see 4.2)",
    "Q3",
    "ID DE",
    "::",
    "+",
    "555 12",
    "aws_secret",
    "A-1 B-2 C-3 D-4",
    "ÉTÉ 2025-13-45",
]
SEPARATORS = [" ", "\n", ", ", ". ", "; ", " (", ") ", ": ", "\t", " — "]

EVERY = DetectorOptions(national_ids=checked_ids(), ip_private=True)
FAST = Detector(builtin_recognizers(EVERY))
PLAIN = Detector(builtin_recognizers(EVERY), fast=False)
BY_DEFAULT = Detector.builtin()
BY_DEFAULT_PLAIN = Detector(builtin_recognizers(DetectorOptions()), fast=False)

pieces = st.one_of(st.sampled_from([v for _, v in VALUES]), st.sampled_from(FILLERS))
texts = st.lists(st.tuples(pieces, st.sampled_from(SEPARATORS)), max_size=25).map(
    lambda items: "".join(p + s for p, s in items)
)
free_texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300
)
# Mostly digits and separators: clusters of every length, gap and shape.
numeric_texts = st.text(alphabet="0123456789 -./()+ABZaz:_é\n", max_size=120)
# Three runs, dates and not quite dates ("2024-05-12", "12/05/2024", "12.05-202").
_run = st.text(alphabet="0123456789", min_size=1, max_size=5)
_sep = st.sampled_from("-/. ")
dates = st.tuples(_run, _sep, _run, _sep, _run, st.sampled_from(["", " ", "-1", " 12"])).map(
    "".join
)
# Runs of digits joined by gaps of separators around the longest a cluster allows (6).
clusters = st.lists(
    st.tuples(
        st.text(alphabet="0123456789", min_size=1, max_size=9),
        st.text(alphabet=" -./()+AZx", min_size=1, max_size=8),
    ),
    max_size=8,
).map(lambda items: "".join(run + gap for run, gap in items))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_the_fast_path_finds_what_the_plain_path_finds(text: str) -> None:
    assert FAST.scan(text) == PLAIN.scan(text)
    assert BY_DEFAULT.scan(text) == BY_DEFAULT_PLAIN.scan(text)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(free_texts, numeric_texts, clusters, dates, texts),
    st.integers(min_value=0, max_value=400),
)
@example("on 2024-05-12, 12/05/2024 and 12.05.202 or 1-2-2024", 0)
@example("12 345-6789", 4)
def test_any_text_from_any_position(text: str, pos: int) -> None:
    pos = min(pos, len(text))
    assert dense_runs(text, pos) == dense_runs_reference(text, pos)
    assert FAST.scan_from(text, pos) == PLAIN.scan_from(text, pos)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from(FILLERS), max_size=6), st.lists(st.sampled_from(FILLERS), max_size=6)
)
def test_a_planted_value_is_found_by_both_paths(before: list[str], after: list[str]) -> None:
    # "; " around it: a number right after another ("10:30 020 7946 0958") is read as its rest
    head, tail = " ".join(before) + "; ", "; " + " ".join(after)
    for kind, value in VALUES:
        text = head + value + tail
        start, end = len(head), len(head) + len(value)

        fast = FAST.scan(text)

        assert fast == PLAIN.scan(text)
        assert any(f.kind == kind and start <= f.start < end for f in fast), (kind, text)


def test_each_gated_recognizer_has_a_character_every_gate_holds() -> None:
    for recognizer in FAST.recognizers:
        char = needle(recognizer.gate)
        assert all(char in gate for gate in recognizer.gate)
        if recognizer.gate and recognizer.kind != "secret:aws_secret":
            assert char, recognizer.kind  # only the AWS secret's two spellings share none
