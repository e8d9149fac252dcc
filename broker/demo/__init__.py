"""The demo: three small a2a-sdk agents that talk to each other through the broker.

The planner delegates to the researcher and the writer through the broker; ``demo-user`` is a
caller-only identity used by ``a2a-broker demo-ask``. This module holds the few names and paths the
launcher, the agents and the ask command share.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

import broker

AGENT_NAMES = ("planner", "researcher", "writer")
CALLER_NAME = "demo-user"
DEFAULT_STATE_DIR = ".a2a-broker-demo"
CREDENTIALS_FILE = "credentials.json"
CONFIG_FILE = "broker.toml"

# How the launcher hands the planner its way into the broker (read only by the agents' CLI).
BROKER_URL_ENV = "A2A_DEMO_BROKER_URL"
CREDENTIAL_ENV = "A2A_DEMO_CREDENTIAL"


class DemoCredentials(msgspec.Struct, frozen=True, kw_only=True):
    """What the launcher writes to ``credentials.json``: the broker URL and every secret."""

    broker_url: str
    admin_token: str
    credentials: dict[str, str]


def find_cards_dir() -> Path:
    """The demo's ``agent_cards`` folder: ``./agent_cards`` if it holds the demo cards, else the
    one beside the ``broker`` package (a source checkout)."""
    local = Path("agent_cards")
    if all((local / f"{name}.json").is_file() for name in AGENT_NAMES):
        return local.resolve()
    return Path(broker.__file__).resolve().parents[1] / "agent_cards"


def find_policy_file() -> Path:
    """The demo policy: ``./policies/policy.csv`` if present, else the one beside the package."""
    local = Path("policies") / "policy.csv"
    if local.is_file():
        return local.resolve()
    return Path(broker.__file__).resolve().parents[1] / "policies" / "policy.csv"


def read_credentials(state_dir: str | Path) -> DemoCredentials:
    """Read ``credentials.json`` from ``state_dir``; raises OSError or msgspec.DecodeError."""
    data = (Path(state_dir) / CREDENTIALS_FILE).read_bytes()
    return msgspec.json.decode(data, type=DemoCredentials)
