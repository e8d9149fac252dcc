"""Scenario (i)'s pure parts: the fake provider's answers, the LiteLLM config, the verdict."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

# benchmarks/ is not part of the installed package: import it from the checkout
from benchmarks.fake_llm import ANSWER_TEXT, CHAT_PATH, MODELS_PATH, make_app
from benchmarks.idle import HALT_NOTE
from benchmarks.litellm_venv import config_yaml, litellm_command
from benchmarks.report_llm import comparisons, llm_section, verdict, without_llm
from benchmarks.scenario_llm import CHAT, CHAT_BODY, LlmPoint, unavailable

# -- the fake provider -------------------------------------------------------------------------


def _call(method: str, path: str) -> tuple[int, bytes]:
    app = make_app("bench-model")
    sent: list[dict[str, Any]] = []
    bodies = iter([{"type": "http.request", "body": CHAT_BODY, "more_body": False}])

    async def receive() -> dict[str, Any]:
        return next(bodies)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    async def call() -> None:
        await app({"type": "http", "method": method, "path": path}, receive, send)

    asyncio.run(call())
    return sent[0]["status"], sent[1]["body"]


def test_fake_provider_answers_a_chat_completion_with_usage() -> None:
    status, body = _call("POST", CHAT_PATH)
    answer = json.loads(body)
    assert status == 200
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == ANSWER_TEXT
    assert answer["usage"] == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    assert CHAT.expect in body  # what the preflight looks for


def test_fake_provider_lists_its_model_and_refuses_other_paths() -> None:
    status, body = _call("GET", MODELS_PATH)
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == ["bench-model"]
    assert _call("GET", "/v1/embeddings")[0] == 404


# -- LiteLLM ------------------------------------------------------------------------------------


def test_litellm_config_points_the_model_at_the_provider() -> None:
    text = config_yaml("bench-model", "http://127.0.0.1:9/v1", "sk-master")
    assert "model_name: bench-model" in text
    assert "model: openai/bench-model" in text
    assert "api_base: http://127.0.0.1:9/v1" in text
    assert "master_key: sk-master" in text


def test_an_installed_venv_is_not_installed_again(tmp_path: Path) -> None:
    (tmp_path / ".installed").write_text("x\n")
    assert litellm_command(tmp_path) == tmp_path / "bin" / "litellm"


# -- the verdict --------------------------------------------------------------------------------


def _point(scenario: str, c: int, rps: float, p99: float, **kw: Any) -> dict[str, Any]:
    base = asdict(unavailable(scenario, "", ""))
    return {**base, "concurrency": c, "rps": rps, "p50_ms": p99 / 2, "p99_ms": p99, **kw}


def _run(broker_rps: float, litellm_p99: float) -> list[dict[str, Any]]:
    return [
        p
        for c in (1, 16, 64)
        for p in (
            _point("i-direct", c, 20_000, 1.0),
            _point("i-broker", c, broker_rps, 10.0),
            _point("i-litellm", c, 100, litellm_p99),
        )
    ]


def test_target_met_when_every_c_has_20x_and_a_lower_p99() -> None:
    lines = verdict(_run(broker_rps=2_500, litellm_p99=50.0))
    assert "**met**" in lines[0]
    assert "25.0x at c=1, 25.0x at c=16, 25.0x at c=64" in lines[0]


def test_target_not_met_below_20x_or_with_a_higher_p99() -> None:
    assert "**not met**" in verdict(_run(broker_rps=1_900, litellm_p99=50.0))[0]
    slow = verdict(_run(broker_rps=2_500, litellm_p99=5.0))[0]
    assert "**not met**" in slow
    assert "not lower at c=1, 16, 64" in slow


def test_a_short_ratio_while_the_broker_had_time_to_spare_is_put_down_to_waits() -> None:
    points = _run(broker_rps=1_500, litellm_p99=50.0)
    for p in points:
        if p["scenario"] == "i-broker":
            p["cpu_util"] = 0.67 if p["concurrency"] == 1 else 0.99
    note = verdict(points)[-1]
    assert "at c=1 it used 67% of its core, so 33% of the time a call took" in note
    assert "c=16" not in note and "c=64" not in note  # saturated there: no wait to blame
    assert "Decision 0105" in note


def test_no_wait_note_where_the_ratio_is_met_or_the_broker_was_saturated() -> None:
    met = _run(broker_rps=2_500, litellm_p99=50.0)
    saturated = _run(broker_rps=1_500, litellm_p99=50.0)
    for points, use in ((met, 0.67), (saturated, 0.95)):
        for p in points:
            if p["scenario"] == "i-broker":
                p["cpu_util"] = use
        assert not any("not saturated" in line for line in verdict(points))


def test_unavailable_litellm_is_not_met_and_says_why() -> None:
    points = [p for p in _run(2_500, 50.0) if p["scenario"] != "i-litellm"]
    points.append(asdict(unavailable("i-litellm", "litellm", "no matching distribution")))
    lines = verdict(points)
    assert lines == [lines[0]]
    assert "**not met**: not measured" in lines[0]
    assert "no matching distribution" in lines[0]
    assert "unavailable: no matching distribution" in "\n".join(llm_section({"points": points}))


def test_rows_kept_from_another_run_are_not_compared_with_this_one() -> None:
    points = [p for p in _run(2_500, 50.0) if p["scenario"] != "i-litellm"]
    points += [
        {**p, "origin": "earlier"} for p in _run(2_500, 50.0) if p["scenario"] == "i-litellm"
    ]
    assert comparisons(points) == []


def test_the_a2a_tables_leave_the_llm_points_out() -> None:
    a2a = {"scenario": "a", "concurrency": 1}
    results = {"points": [a2a, *_run(2_500, 50.0)], "other": 1}
    assert without_llm(results) == {"points": [a2a], "other": 1}


def test_an_llm_point_serialises_with_what_answered_it() -> None:
    point = LlmPoint(**{**asdict(unavailable("i-broker", "", "")), "software": "a2a-broker"})
    assert point.as_dict()["software"] == "a2a-broker"
    assert point.as_dict()["unavailable"] == ""


def test_the_wait_note_names_a_machine_whose_idle_vcpus_halt_at_once() -> None:
    points = _run(broker_rps=1_500, litellm_p99=50.0)
    for p in points:
        if p["scenario"] == "i-broker":
            p["cpu_util"] = 0.67
    halting = {"idle": {"driver": "haltpoll", "halt_poll_ns": 0}}
    assert verdict(points, halting)[-1].endswith(HALT_NOTE)
    polling = {"idle": {"driver": "haltpoll", "halt_poll_ns": 200_000}}
    assert HALT_NOTE not in verdict(points, polling)[-1]
    assert HALT_NOTE not in verdict(points)[-1]  # a run that did not record its machine's
