"""Data controls on real payload shapes: A2A messages, parts, artifacts, tasks and stream
events (built with the a2a-sdk's own types), OpenAI chat requests and completions; the actions,
the errors, pseudonyms restored, and nothing but types and counts in what is recorded."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from a2a.types import Artifact, Message, Part, Role, Task, TaskState, TaskStatus
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Value

from broker.datacontrols import (
    DataControls,
    DataControlsSettings,
    DataRule,
    FlowRule,
    Placeholders,
    Subject,
)
from broker.datacontrols.findings import Finding
from broker.datacontrols.presidio import PresidioAnalyzer, PresidioUnavailableError, load_presidio
from broker.errors import (
    DataBlockedError,
    DataControlsUnavailableError,
    DataFlowDeniedError,
    DataResponseBlockedError,
    DataScanLimitError,
)
from broker.settings_datacontrols import PresidioSettings
from testkit.canaries import Canaries

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
AWS = "AKIAIOSFODNN7EXAMPLE"
REQUEST = Subject("request", "alice", agent="billing")
RESPONSE = Subject("response", "alice", agent="billing")


def controls(*rules: DataRule, **options: Any) -> DataControls:
    return DataControls(DataControlsSettings(enabled=True, rules=rules, **options))


REDACT = controls(DataRule(actions={"*": "redact"}))


def a2a_message(*parts: Part) -> dict[str, Any]:
    message = Message(role=Role.ROLE_USER, message_id="m1", parts=list(parts))
    return MessageToDict(message)


def test_every_kind_of_a2a_part_is_scanned_and_redacted_in_place() -> None:
    data = Value()
    data.struct_value.update({"customer": {"mail": EMAIL, "cards": [CARD]}, "n": 3})
    inline = base64.b64encode(f"name,card\nJane,{CARD}\n".encode()).decode()
    params = {
        "message": a2a_message(
            Part(text=f"write to {EMAIL}"),
            Part(data=data),
            Part(
                raw=base64.b64decode(inline), media_type="text/csv", filename=f"{EMAIL}_invoice.csv"
            ),
            Part(url=f"https://files.example/{AWS}/report.pdf"),
            Part(raw=b"\x89PNG" + CARD.encode(), media_type="image/png"),
        ),
        "metadata": {"note": f"card {CARD}"},
    }

    seen = REDACT.inspect_a2a(params, REQUEST)

    parts = seen.payload["message"]["parts"]
    assert parts[0]["text"] == "write to <EMAIL_1>"
    assert parts[1]["data"]["customer"] == {"mail": "<EMAIL_1>", "cards": ["<CARD_1>"]}
    assert base64.b64decode(parts[2]["raw"]).decode() == "name,card\nJane,<CARD_1>\n"
    assert parts[2]["filename"] == "<EMAIL_1>_invoice.csv"
    assert parts[3]["url"] == "https://files.example/<AWS_KEY_1>/report.pdf"
    assert parts[4] == params["message"]["parts"][4]  # binary: not read
    assert seen.payload["metadata"] == {"note": "card <CARD_1>"}
    assert seen.found == {"pii:email": 3, "pii:card": 3, "secret:aws_key": 1}
    assert seen.changed
    assert params["message"]["parts"][0]["text"] == f"write to {EMAIL}"  # the input is untouched


def test_tasks_artifacts_and_stream_events_are_scanned() -> None:
    task = Task(
        id="t1",
        context_id="c1",
        status=TaskStatus(
            state=TaskState.TASK_STATE_COMPLETED,
            message=Message(role=Role.ROLE_AGENT, message_id="a", parts=[Part(text=EMAIL)]),
        ),
        artifacts=[Artifact(artifact_id="r", name=f"for {EMAIL}", parts=[Part(text=CARD)])],
        history=[Message(role=Role.ROLE_USER, message_id="u", parts=[Part(text=AWS)])],
    )
    event = {"jsonrpc": "2.0", "id": 1, "result": {"task": MessageToDict(task)}}

    seen = REDACT.inspect_a2a(event, RESPONSE)

    text = json.dumps(seen.payload)
    assert EMAIL not in text and CARD not in text and AWS not in text
    assert seen.payload["result"]["task"]["artifacts"][0]["name"] == "for <EMAIL_1>"
    update = {
        "artifactUpdate": {
            "taskId": "t1",
            "artifact": {"artifactId": "x", "parts": [{"text": CARD}]},
        }
    }
    assert REDACT.inspect_a2a(update, RESPONSE).payload["artifactUpdate"]["artifact"]["parts"] == [
        {"text": "<CARD_1>"}
    ]


def test_a2a_0_3_parts_are_scanned_too() -> None:
    inline = base64.b64encode(EMAIL.encode()).decode()
    message = {
        "kind": "message",
        "parts": [
            {"kind": "text", "text": CARD},
            {"kind": "file", "file": {"bytes": inline, "mimeType": "text/plain", "name": "a.txt"}},
        ],
    }

    parts = REDACT.inspect_a2a({"message": message}, REQUEST).payload["message"]["parts"]

    assert parts[0]["text"] == "<CARD_1>"
    assert base64.b64decode(parts[1]["file"]["bytes"]).decode() == "<EMAIL_1>"


def test_nothing_found_leaves_the_very_same_payload() -> None:
    params = {"message": a2a_message(Part(text="nothing to see here, version 2 of the plan"))}

    seen = REDACT.inspect_a2a(params, REQUEST)

    assert seen.payload is params
    assert not seen.changed
    assert seen.found == {}


def test_the_same_value_gets_the_same_placeholder_and_numbers_count_per_type() -> None:
    other = "bob@example.org"
    text = f"{EMAIL}, {other}, again {EMAIL}; card {CARD}"

    assert REDACT.inspect_text(text, REQUEST).payload == (
        "<EMAIL_1>, <EMAIL_2>, again <EMAIL_1>; card <CARD_1>"
    )


def test_each_type_gets_its_own_action_and_only_tagged_types_become_tags() -> None:
    mixed = controls(
        DataRule(actions={"pii:email": "allow", "pii:card": "redact", "pii:iban": "tag"})
    )
    text = f"{EMAIL} {CARD} DE89 3704 0044 0532 0130 00 {AWS}"

    seen = mixed.inspect_text(text, REQUEST)

    assert seen.payload == f"{EMAIL} <CARD_1> DE89 3704 0044 0532 0130 00 {AWS}"
    assert seen.actions == {
        "pii:email": "allow",
        "pii:card": "redact",
        "pii:iban": "tag",
        "secret:aws_key": "tag",  # default_action
    }
    assert seen.tags == ("pii:iban", "secret:aws_key")


def test_a_blocked_type_refuses_the_request_naming_types_never_values() -> None:
    strict = controls(DataRule(actions={"secret:*": "block"}))

    with pytest.raises(DataBlockedError) as refused:
        strict.inspect_a2a({"message": a2a_message(Part(text=f"key {AWS} and {EMAIL}"))}, REQUEST)

    error = refused.value
    assert (error.code, error.http_status, error.reason) == (-32030, 403, "DATA_BLOCKED")
    assert error.metadata == {"types": "secret:aws_key", "direction": "request"}
    assert AWS not in f"{error.message} {error.detail} {error.metadata}"


def test_a_blocked_type_in_an_answer_is_not_relayed() -> None:
    strict = controls(DataRule(direction="response", actions={"pii:card": "block"}))

    assert strict.inspect_text(CARD, REQUEST).payload == CARD  # requests may carry cards
    with pytest.raises(DataResponseBlockedError) as refused:
        strict.inspect_text(f"your card {CARD}", RESPONSE)
    assert refused.value.code == -32031


def test_pseudonyms_leave_for_the_model_and_come_back_in_its_answer() -> None:
    llm = controls(DataRule(models=["openai/*"], actions={"pii:*": "pseudonymize"}))
    subject = Subject("request", "alice", model="openai/gpt-4o")
    call = Placeholders()
    body = {
        "model": "openai/gpt-4o",
        "messages": [
            {"role": "system", "content": "You help with payments."},
            {"role": "user", "content": [{"type": "text", "text": f"Charge {CARD} for {EMAIL}"}]},
        ],
    }

    sent = llm.inspect_chat_request(body, subject, call).payload
    answer = {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Charged <CARD_1>; receipt to <EMAIL_1>.",
                },
            }
        ]
    }
    back = llm.inspect_chat_response(
        answer, Subject("response", "alice", model="openai/gpt-4o"), call
    )

    assert sent["messages"][1]["content"][0]["text"] == "Charge <CARD_1> for <EMAIL_1>"
    assert (
        back.payload["choices"][0]["message"]["content"] == f"Charged {CARD}; receipt to {EMAIL}."
    )


def test_redacted_values_are_never_restored() -> None:
    call = Placeholders()
    REDACT.inspect_text(CARD, REQUEST, call)

    answer = REDACT.inspect_text("the card is <CARD_1>", RESPONSE, call)

    assert answer.payload == "the card is <CARD_1>"


def test_a_streamed_llm_answer_is_restored_across_chunks_and_scanned() -> None:
    llm = controls(
        DataRule(direction="request", actions={"*": "pseudonymize"}), default_action="redact"
    )
    call = Placeholders()
    llm.inspect_text(f"mail {EMAIL}", Subject("request", "alice", model="m"), call)
    stream = llm.text_stream(Subject("response", "alice", model="m"), call)

    chunks = ["Sent to <EM", "AIL_", "1> and a copy to bo", "b@example.org", " done"]
    out = "".join(stream.feed(c) for c in chunks) + stream.finish()

    assert out == f"Sent to {EMAIL} and a copy to <EMAIL_2> done"
    assert stream.inspection.found == {"pii:email": 1}


def test_a_blocked_secret_in_a_stream_is_refused_before_it_is_released() -> None:
    strict = controls(DataRule(actions={"secret:*": "block"}))
    stream = strict.text_stream(RESPONSE)
    released = ""

    with pytest.raises(DataResponseBlockedError):
        for chunk in ["here is ", "the key AKIA", "IOSFODNN7EXA", "MPLE and more text"]:
            released += stream.feed(chunk)

    assert "AKIA" not in released
    assert released.startswith("here is ")


def test_text_beyond_the_scan_limit_is_refused_not_forwarded_unchecked() -> None:
    small = controls(max_scan_chars=100)

    small.inspect_text("x" * 100, REQUEST)
    with pytest.raises(DataScanLimitError):
        small.inspect_a2a(
            {"message": a2a_message(Part(text="x" * 60), Part(text="y" * 60))}, REQUEST
        )
    stream = small.text_stream(RESPONSE)
    stream.feed("z" * 100)
    with pytest.raises(DataScanLimitError):
        stream.feed("z")


def test_tagged_work_may_not_flow_to_a_forbidden_target() -> None:
    guarded = controls(flows=(FlowRule(tags=("secret:*",), models=("openai/*",)),))

    guarded.check_flow(["pii:email"], model="openai/gpt-4o")
    with pytest.raises(DataFlowDeniedError) as refused:
        guarded.check_flow(["pii:email", "secret:jwt"], model="openai/gpt-4o")
    assert refused.value.metadata == {"tag": "secret:jwt", "target": "openai/gpt-4o"}
    assert (refused.value.code, refused.value.reason) == (-32032, "DATA_FLOW_DENIED")


def test_what_is_recorded_holds_types_counts_and_actions_and_no_canary() -> None:
    canaries = Canaries()
    mixed = controls(DataRule(actions={"pii:*": "redact"}))

    seen = mixed.inspect_a2a({"message": a2a_message(Part(text=canaries.text()))}, REQUEST)

    record = json.dumps(seen.audit())
    canaries.assert_absent(record)
    assert seen.audit()["pii:card"] == {"count": 1, "action": "redact"}
    assert seen.audit()["secret:github_token"] == {"count": 1, "action": "tag"}
    with pytest.raises(AssertionError, match="pii:card"):
        canaries.assert_absent(f"log line {canaries.values['pii:card']}")


def test_every_canary_is_detected_whatever_the_seed() -> None:
    detector = REDACT.detector
    for seed in range(20):
        canaries = Canaries(seed)
        found = {f.kind for f in detector.scan(canaries.text())}
        assert found == set(canaries.values), seed


# --- the optional Presidio engine ---------------------------------------------------------------


class _Result:
    def __init__(self, entity_type: str, start: int, end: int, score: float) -> None:
        self.entity_type, self.start, self.end, self.score = entity_type, start, end, score


class _Engine:
    """Stands in for presidio_analyzer.AnalyzerEngine, whose spaCy model is not installed here."""

    def __init__(self, results: list[_Result] | Exception) -> None:
        self.results = results

    def analyze(self, *, text: str, language: str, entities: list[str]) -> list[_Result]:
        if isinstance(self.results, Exception):
            raise self.results
        return self.results


def test_presidio_findings_are_mapped_filtered_and_never_override_built_in_ones() -> None:
    text = f"Jane Doe <{EMAIL}> lives in Springfield"
    engine = _Engine(
        [
            _Result("PERSON", 0, 8, 0.85),
            _Result("LOCATION", 39, 50, 0.3),  # below min_score
            _Result("PERSON", 10, 30, 0.9),  # overlaps the e-mail: the built-in finding stays
            _Result("PHONE_NUMBER", 0, 4, 1.0),  # not configured
        ]
    )
    analyzer = PresidioAnalyzer(engine, PresidioSettings())
    both = DataControls(
        DataControlsSettings(enabled=True, rules=(DataRule(actions={"*": "redact"}),)),
        analyzer=analyzer,
    )

    assert analyzer.analyze(text) == [Finding(0, 8, "pii:person"), Finding(10, 30, "pii:person")]
    assert both.inspect_text(text, REQUEST).payload == "<PERSON_1> <<EMAIL_1>> lives in Springfield"


def test_a_failing_presidio_engine_refuses_rather_than_forwarding_unchecked() -> None:
    analyzer = PresidioAnalyzer(_Engine(RuntimeError("model gone")), PresidioSettings())
    both = DataControls(DataControlsSettings(enabled=True), analyzer=analyzer)

    with pytest.raises(DataControlsUnavailableError) as refused:
        both.inspect_text("hello", REQUEST)
    assert refused.value.retryable


def test_without_the_extra_the_presidio_engine_says_what_to_install() -> None:
    try:  # the extra is not in the test set; where someone installed it, this does not apply
        import presidio_analyzer  # noqa: F401
    except ImportError:
        with pytest.raises(PresidioUnavailableError, match="a2a-broker\\[presidio\\]"):
            load_presidio(PresidioSettings())
    else:
        pytest.skip("presidio is installed here")


def test_the_canary_check_reads_files_folders_and_encoded_forms(tmp_path: Path) -> None:
    canaries = Canaries(seed=7)
    clean = tmp_path / "logs"
    clean.mkdir()
    (clean / "broker.log").write_text("request ok types=pii:card count=1\n")
    canaries.assert_absent(clean, b"bytes without values")

    card = canaries.values["pii:card"]
    leaks = {
        "plain.log": f"value {card}",
        "json.log": json.dumps({"v": canaries.values["pii:email"]}),
        "b64.log": base64.b64encode(canaries.values["secret:aws_key"].encode()).decode(),
    }
    for name, text in leaks.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(AssertionError, match=name):
            canaries.assert_absent(tmp_path / name)
