"""Each recognizer finds what it should (true positives) and leaves alone what only looks like
it (false positives): validators, edges and formats."""

from __future__ import annotations

import pytest

from broker.datacontrols import Detector, DetectorOptions
from broker.datacontrols.national_ids import checked_ids
from broker.settings_datacontrols import NATIONAL_IDS

DETECTOR = Detector.builtin()
ALNUM = "aB3dE5gH7jK9mN1pQ2rS4tU6vW8xY0zC2fG4"  # 36 mixed characters for fake keys


def kinds(text: str, detector: Detector = DETECTOR) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start : f.end]) for f in detector.scan(text)]


def found_alone(value: str, kind: str, detector: Detector = DETECTOR) -> None:
    text = f"see {value}, thanks"
    assert kinds(text, detector) == [(kind, value)]


TRUE_POSITIVES = [
    ("pii:email", "jane.doe@example.com"),
    ("pii:email", "a+tag@sub.example.co.uk"),
    ("pii:phone", "+1 415 555 2671"),
    ("pii:phone", "+44 20 7946 0958"),
    ("pii:phone", "+49 30 901820"),
    ("pii:phone", "0044 20 7946 0958"),
    ("pii:phone", "(201) 555-0123"),
    ("pii:phone", "020 7946 0958"),
    ("pii:card", "4111 1111 1111 1111"),
    ("pii:card", "5500-0000-0000-0004"),
    ("pii:card", "378282246310005"),
    ("pii:card", "6011111111111117"),
    ("pii:iban", "DE89 3704 0044 0532 0130 00"),
    ("pii:iban", "GB82WEST12345698765432"),
    ("pii:iban", "FR1420041010050500013M02606"),
    ("pii:national_id", "536-90-4399"),  # us.ssn
    ("pii:national_id", "2 95 10 99 126 111 93"),  # fr.nir
    ("pii:national_id", "54362315K"),  # es.dni
    ("pii:national_id", "X2482300W"),  # es.nie
    ("pii:national_id", "RCCMNL83S18D969H"),  # it.codicefiscale
    ("pii:national_id", "390.533.447-05"),  # br.cpf
    ("pii:national_id", "880320-0016"),  # se.personnummer
    ("pii:national_id", "211062-5629"),  # dk.cpr
    ("pii:national_id", "2345 6789 0124"),  # in.aadhaar
    ("pii:ip", "8.8.8.8"),
    ("pii:ip", "2001:4860:4860::8888"),
    ("secret:aws_key", "AKIAIOSFODNN7EXAMPLE"),
    ("secret:github_token", "ghp_" + ALNUM),
    ("secret:github_token", "github_pat_" + "A1b2C3d4E5_" * 7 + "x1b2C"),
    ("secret:gitlab_token", "glpat-" + ALNUM[:20]),
    ("secret:slack_token", "xoxb-1234567890-0987654321-" + ALNUM[:24]),
    ("secret:slack_webhook", "https://hooks.slack.com/services/T0000AAAA/B0000BBBB/" + ALNUM[:24]),
    ("secret:stripe_key", "sk_live_" + ALNUM[:24]),
    ("secret:openai_key", "sk-proj-" + ALNUM + ALNUM),
    ("secret:openai_key", "sk-" + ALNUM[:32]),
    ("secret:anthropic_key", "sk-ant-api03-" + ALNUM + ALNUM + "-AA"),
    ("secret:google_api_key", "AIza" + ALNUM[:35]),
    ("secret:google_oauth_secret", "GOCSPX-" + ALNUM[:28]),
    ("secret:npm_token", "npm_" + ALNUM),
    ("secret:huggingface_token", "hf_" + "abcdefghijKLMNOPQRSTuvwxyzABCDEFGH"),
    ("secret:sendgrid_key", "SG." + ALNUM[:22] + "." + ALNUM + ALNUM[:7]),
    (
        "secret:jwt",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ),
]


@pytest.mark.parametrize(("kind", "value"), TRUE_POSITIVES, ids=[v for _, v in TRUE_POSITIVES])
def test_a_valid_value_is_found_with_its_type_and_exact_span(kind: str, value: str) -> None:
    found_alone(value, kind)


FALSE_POSITIVES = [
    # e-mail: no domain with a TLD, a bad local part
    "user@localhost",
    "ping @handle on chat",
    "a..b@example.com",
    "name@example.c",
    # phone: dates, times, versions, amounts, too few digits, invalid numbers
    "on 2024-05-12 at 10:30",
    "version 10.2.3 and 1.234.567 units",
    "ticket 123-456",
    "+1 000 000 0000",
    "call 555 0000",
    # cards: a failed Luhn check, no network, mixed separators, glued to more digits
    "4111 1111 1111 1112",
    "1234567812345670",
    "4111-1111 1111-1111",
    "ref 41111111111111111111",
    "x4111111111111111",
    # IBAN: a wrong check, an unknown country
    "DE89 3704 0044 0532 0130 01",
    "XX12 3456 7890 1234 5678",
    # national ids: numbers that fail their checks
    "000-12-3456",
    "666-12-3456",
    "078-05-1120",
    "54362315A",
    "390.533.447-06",
    "880320-0017",
    # IP: private and special addresses by default, bad octets, versions, code
    "10.0.0.1 and 192.168.1.20 and 127.0.0.1",
    "999.1.1.1",
    "release 1.2.3.4.5",
    "std::vector and a::b and 12:30:45",
    # secrets: glued to longer tokens, too short, words, a public key, a non-JWT
    "AKIAIOSFODNN7EXAMPLEX",
    "xAKIAIOSFODNN7EXAMPLE",
    "ghp_short",
    "the task-management-system-overview-document",
    "sk-this-is-not-a-key-at-all-really-no",
    "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqh\n-----END PUBLIC KEY-----",
    "eyJub3QiOiJqd3QifQ.eyJ4IjoxfQ.abcdef",
    # prose with numbers
    "We shipped 3 releases in Q3 2024; order #58213 totals 1,250.00 EUR (see section 4.2).",
]


@pytest.mark.parametrize("text", FALSE_POSITIVES)
def test_a_lookalike_is_not_found(text: str) -> None:
    assert kinds(text) == []


def test_a_pem_private_key_is_found_whole_with_its_markers() -> None:
    key = (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1b2\nx9Y8+/=\n"
        "-----END RSA PRIVATE KEY-----"
    )
    text = f"here:\n{key}\nPlease rotate it."

    assert kinds(text) == [("secret:private_key", key)]


def test_a_pem_private_key_without_its_end_marker_is_found_with_its_body() -> None:
    text = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nMIIEvQ"

    assert kinds(text) == [("secret:private_key", text)]


def test_an_aws_secret_key_is_found_by_its_name_and_only_the_value_is_the_finding() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    text = f'aws_secret_access_key = "{secret}"'

    assert kinds(text) == [("secret:aws_secret", secret)]


def test_an_iban_followed_by_a_capitalised_word_is_found_without_it() -> None:
    assert kinds("IBAN DE89 3704 0044 0532 0130 00 AND more") == [
        ("pii:iban", "DE89 3704 0044 0532 0130 00")
    ]


def test_private_addresses_are_found_when_asked_for() -> None:
    detector = Detector.builtin(DetectorOptions(ip_private=True))

    assert kinds("from 10.0.0.1 and fd00::1", detector) == [
        ("pii:ip", "10.0.0.1"),
        ("pii:ip", "fd00::1"),
    ]


def test_national_numbers_are_read_only_in_the_configured_regions() -> None:
    german = Detector.builtin(DetectorOptions(phone_regions=("DE",)))

    assert kinds("call 089 1234567") == []
    assert kinds("call 089 1234567", german) == [("pii:phone", "089 1234567")]


@pytest.mark.parametrize(
    ("name", "value"),
    [("de.idnr", "36574261809"), ("nl.bsn", "111222333"), ("pl.pesel", "44051401359")],
)
def test_weakly_checked_ids_are_off_by_default_and_found_when_enabled(
    name: str, value: str
) -> None:
    enabled = Detector.builtin(DetectorOptions(national_ids=(name,)))

    assert kinds(f"id {value}.") == []
    assert kinds(f"id {value}.", enabled) == [("pii:national_id", value)]


def test_every_national_id_name_builds_a_recognizer() -> None:
    detector = Detector.builtin(DetectorOptions(national_ids=NATIONAL_IDS))

    assert checked_ids() == NATIONAL_IDS  # the settings accept exactly what can be checked
    assert "pii:national_id" in detector.kinds


def test_overlapping_candidates_resolve_to_the_leftmost_longest() -> None:
    # The card number is also a run of digits the phone and id patterns read.
    text = "pay 4111 1111 1111 1111 now; mail x@example.com."

    assert kinds(text) == [("pii:card", "4111 1111 1111 1111"), ("pii:email", "x@example.com")]


def test_a_key_inside_a_url_is_a_key() -> None:
    text = "GET https://example.com/api?key=AIza" + ALNUM[:35] + "&q=1"

    assert [k for k, _ in kinds(text)] == ["secret:google_api_key"]


def test_many_values_in_one_text_are_all_found_in_order() -> None:
    values = [v for _, v in TRUE_POSITIVES]
    text = "\n".join(f"item {i}: {v} ." for i, v in enumerate(values))

    assert [v for _, v in kinds(text)] == values


@pytest.mark.parametrize(
    "text",
    [
        "on 2024-05-12 4111 1111 1111 1111",
        "2024-05-12: (201) 555-0123",
        "GB82 WEST 1234 5698 7654 32",
        "12/05/2024 536-90-4399",
    ],
)
def test_a_value_next_to_a_date_is_still_found(text: str) -> None:
    assert len(kinds(text)) == 1
