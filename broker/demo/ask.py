"""Asking a demo agent through the broker with the a2a-sdk client.

Used twice: by the planner, which asks the researcher and the writer, and by
``a2a-broker demo-ask``, which asks the planner as the caller-only identity ``demo-user``.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
from a2a.client import (
    A2ACardResolver,
    A2AClientError,
    AgentCardResolutionError,
    Client,
    ClientConfig,
    ClientFactory,
)
from a2a.client.interceptors import ClientCallInterceptor
from a2a.helpers import get_artifact_text, get_message_text
from a2a.types import (
    AgentCard,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    TaskState,
)
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH, TransportProtocol
from a2a.utils.errors import A2AError

from broker.demo import CALLER_NAME, CREDENTIALS_FILE, DEFAULT_STATE_DIR, read_credentials

# Generous: the planner's answer waits for two delegated tasks; SSE waits between events.
CALL_TIMEOUT = httpx.Timeout(60.0, connect=5.0)


@dataclass(frozen=True)
class AgentConnection:
    """An SDK client for one agent, and where it was found and what it calls."""

    client: Client
    card_url: str
    interface_url: str
    binding: str


@dataclass
class TaskOutcome:
    """What a caller has learnt about one task from the events seen so far."""

    task_id: str = ""
    state: TaskState = TaskState.TASK_STATE_UNSPECIFIED
    status_text: str = ""
    artifacts: dict[str, str] = field(default_factory=dict)

    def record(self, event: StreamResponse) -> None:
        if event.HasField("task"):
            self.task_id, self.state = event.task.id, event.task.status.state
            self.status_text = get_message_text(event.task.status.message)
            for artifact in event.task.artifacts:
                self.artifacts[artifact.name] = get_artifact_text(artifact)
        elif event.HasField("status_update"):
            self.state = event.status_update.status.state
            self.status_text = get_message_text(event.status_update.status.message)
        elif event.HasField("artifact_update"):
            update = event.artifact_update
            before = self.artifacts.get(update.artifact.name, "") if update.append else ""
            self.artifacts[update.artifact.name] = before + get_artifact_text(update.artifact)
        elif event.HasField("message"):
            self.status_text = get_message_text(event.message)

    @property
    def completed(self) -> bool:
        return bool(self.state == TaskState.TASK_STATE_COMPLETED)


def broker_card_url(broker_url: str, agent: str) -> str:
    """The card of ``agent`` as the broker serves it."""
    return f"{broker_url.rstrip('/')}/agents/{agent}{AGENT_CARD_WELL_KNOWN_PATH}"


def bearer_http_client(credential: str) -> httpx.AsyncClient:
    """An HTTP client that presents ``credential`` to the broker on every request."""
    headers = {"Authorization": f"Bearer {credential}"}
    return httpx.AsyncClient(headers=headers, timeout=CALL_TIMEOUT)


async def connect(
    http: httpx.AsyncClient,
    card_url: str,
    binding: str = TransportProtocol.JSONRPC.value,
    streaming: bool = True,
    interceptors: Sequence[ClientCallInterceptor] = (),
) -> AgentConnection:
    """Fetch the card at ``card_url`` and build an SDK client that speaks ``binding``.

    Raises the SDK's A2AError subclasses: AgentCardResolutionError when the card cannot be
    fetched or parsed, A2AClientError when it offers no ``binding`` interface.
    """
    config = ClientConfig(
        streaming=streaming, httpx_client=http, supported_protocol_bindings=[binding]
    )
    factory = ClientFactory(config)  # sets A2A-Version: 1.0 on `http`
    card = await A2ACardResolver(http, card_url).get_agent_card(relative_card_path="/")
    try:
        client = factory.create(card, interceptors=list(interceptors))
    except ValueError as exc:  # the factory's way of saying no interface matches
        raise A2AClientError(f"the card at {card_url} offers no {binding} interface") from exc
    return AgentConnection(client, card_url, interface_url(card, binding), binding)


def interface_url(card: AgentCard, binding: str) -> str:
    """The URL of the card's first interface that speaks ``binding``."""
    return str(next(i.url for i in card.supported_interfaces if i.protocol_binding == binding))


def user_message(text: str) -> SendMessageRequest:
    message = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text=text)])
    return SendMessageRequest(message=message)


def state_name(state: TaskState) -> str:
    return str(TaskState.Name(state)).removeprefix("TASK_STATE_")


def describe(event: StreamResponse) -> str:
    """One line for a streamed event: its kind, the task state and any text."""
    if event.HasField("task"):
        state = state_name(event.task.status.state)
        return f"[task {event.task.id[:8]}] {state}"
    if event.HasField("status_update"):
        status = event.status_update.status
        return f"[{state_name(status.state)}] {get_message_text(status.message)}".rstrip()
    if event.HasField("artifact_update"):
        artifact = event.artifact_update.artifact
        return f"[artifact {artifact.name!r}] {len(get_artifact_text(artifact))} characters"
    return f"[message] {get_message_text(event.message)}"


async def ask(topic: str, state_dir: str | Path = DEFAULT_STATE_DIR, stream: bool = True) -> int:
    """Ask the demo planner about ``topic`` through the broker, printing every event.

    Returns 0 when the planner's task completed, 1 when it did not or a call failed, and 2 when
    the demo's credentials file cannot be read (the demo is not running).
    """
    try:
        credentials = read_credentials(state_dir)
    except (OSError, msgspec.DecodeError) as exc:
        path = Path(state_dir) / CREDENTIALS_FILE
        print(f"cannot read {path} ({exc}); start the demo with `a2a-broker demo`", file=sys.stderr)
        return 2
    token = credentials.credentials.get(CALLER_NAME, "")
    try:
        outcome = await _ask_planner(topic, credentials.broker_url, token, stream)
    except A2AError as exc:
        print(f"the call failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if isinstance(exc, AgentCardResolutionError) and exc.status_code is None:
            print("is `a2a-broker demo` running?", file=sys.stderr)
        return 1
    _print_outcome(outcome)
    return 0 if outcome.completed else 1


async def _ask_planner(topic: str, broker_url: str, token: str, stream: bool) -> TaskOutcome:
    outcome = TaskOutcome()
    async with bearer_http_client(token) as http:
        planner = await connect(http, broker_card_url(broker_url, "planner"), streaming=stream)
        mode = "streaming" if stream else "waiting for the answer"
        print(f"asking planner as {CALLER_NAME!r} via {planner.interface_url} ({mode})")
        async for event in planner.client.send_message(user_message(topic)):
            outcome.record(event)
            print(describe(event), flush=True)
    return outcome


def _print_outcome(outcome: TaskOutcome) -> None:
    note = f" ({outcome.status_text})" if outcome.status_text else ""
    print(f"\nfinal state: {state_name(outcome.state)}{note}")
    for name, text in outcome.artifacts.items():
        print(f"\n=== artifact {name!r} ===\n{text}")
