"""The demo agents' cards in agent_cards/ are valid A2A 1.0 cards, as the a2a-sdk reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from a2a.client.card_resolver import parse_agent_card
from a2a.utils.proto_utils import validate_proto_required_fields
from google.protobuf.json_format import MessageToDict

from broker.demo import AGENT_NAMES
from broker.demo.agents import card_port, load_card

CARDS_DIR = Path(__file__).resolve().parents[2] / "agent_cards"
PORTS = {"planner": 9101, "researcher": 9102, "writer": 9103}


def _card_json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CARDS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_card_passes_the_sdk_required_field_check(name: str) -> None:
    card = parse_agent_card(_card_json(name))

    validate_proto_required_fields(card)  # raises InvalidParamsError naming any missing field


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_card_has_no_field_the_sdk_does_not_know(name: str) -> None:
    # The SDK parser ignores unknown fields, so a misspelt key would vanish silently.
    data = _card_json(name)

    assert MessageToDict(parse_agent_card(data)) == data


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_card_offers_both_bindings_with_streaming_on_its_port(name: str) -> None:
    card = parse_agent_card(_card_json(name))

    base = f"http://127.0.0.1:{PORTS[name]}/a2a"
    assert card.name == name
    assert card.capabilities.streaming
    assert [(i.protocol_binding, i.url, i.protocol_version) for i in card.supported_interfaces] == [
        ("JSONRPC", f"{base}/jsonrpc", "1.0"),
        ("HTTP+JSON", f"{base}/rest", "1.0"),
    ]
    assert list(card.default_input_modes) == list(card.default_output_modes) == ["text/plain"]
    assert card.provider.organization
    [skill] = card.skills
    assert skill.id and skill.tags and skill.examples


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_load_card_moves_the_interfaces_to_the_given_port(name: str) -> None:
    card = load_card(name, port=41234, cards_dir=CARDS_DIR)

    assert card_port(card) == 41234
    assert [i.url for i in card.supported_interfaces] == [
        "http://127.0.0.1:41234/a2a/jsonrpc",
        "http://127.0.0.1:41234/a2a/rest",
    ]
    unchanged = load_card(name, cards_dir=CARDS_DIR)
    assert card_port(unchanged) == PORTS[name]
