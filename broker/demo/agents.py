"""The demo agents: a researcher, a writer, and a planner that delegates to both through the broker.

Each is a real a2a-sdk 1.3.0 agent on 127.0.0.1 offering JSON-RPC at ``/a2a/jsonrpc`` and HTTP+JSON
at ``/a2a/rest`` with streaming, serving its card from ``agent_cards/<name>.json`` at
``/.well-known/agent-card.json``. Run one with::

    python -m broker.demo.agents researcher --port 9102
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import uvicorn
from a2a.client.card_resolver import parse_agent_card
from a2a.helpers import new_task_from_user_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCard, Part, TaskState
from a2a.utils.constants import TransportProtocol
from a2a.utils.errors import A2AError, InvalidParamsError
from starlette.applications import Starlette
from starlette.types import Message, Receive, Scope, Send

from broker.delegation.agent import ASGIApp, DelegationInterceptor, capture_delegation
from broker.demo import AGENT_NAMES, BROKER_URL_ENV, CREDENTIAL_ENV, find_cards_dir
from broker.demo.ask import (
    TaskOutcome,
    bearer_http_client,
    broker_card_url,
    connect,
    state_name,
    user_message,
)

HOST = "127.0.0.1"
JSONRPC_PATH = "/a2a/jsonrpc"
REST_PATH = "/a2a/rest"
JSONRPC = TransportProtocol.JSONRPC.value
HTTP_JSON = TransportProtocol.HTTP_JSON.value
STEP_DELAY_S = 0.2  # makes streaming visible; the agents do no real work

# --- cards and serving ------------------------------------------------------------------------


def load_card(name: str, port: int | None = None, cards_dir: Path | None = None) -> AgentCard:
    """The card in ``<cards_dir>/<name>.json``; with ``port``, its interfaces use that port."""
    path = (cards_dir or find_cards_dir()) / f"{name}.json"
    card = parse_agent_card(json.loads(path.read_text(encoding="utf-8")))
    if port is not None:
        for interface in card.supported_interfaces:
            interface.url = urlsplit(interface.url)._replace(netloc=f"{HOST}:{port}").geturl()
    return card


def card_port(card: AgentCard) -> int:
    """The port the card's preferred interface is on."""
    return urlsplit(card.supported_interfaces[0].url).port or 80


def build_app(card: AgentCard, executor: AgentExecutor) -> ASGIApp:
    """An app serving ``card`` and both A2A bindings backed by ``executor``; it remembers each
    request's A2A-Delegation token so calls made for the task can present it."""
    handler = DefaultRequestHandler(
        agent_executor=executor, task_store=InMemoryTaskStore(), agent_card=card
    )
    # The REST routes end in a `/{tenant}` catch-all mount, so they go last.
    app = Starlette(
        routes=[
            *create_agent_card_routes(card),
            *create_jsonrpc_routes(handler, JSONRPC_PATH),
            *create_jsonrpc_routes(handler, JSONRPC_PATH + "/"),
            *create_rest_routes(handler, path_prefix=REST_PATH),
        ]
    )
    return capture_delegation(log_requests(app))


def log_requests(app: ASGIApp) -> ASGIApp:
    """``app`` wrapped to print one JSON line per HTTP request: method, decoded path, status.

    The demo's own record of what reached each agent (tests read it; uvicorn's access log
    format is not ours to rely on).
    """

    async def logged(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_logged(message: Message) -> None:
            # Printed as the answer starts, so the line is there before the caller has it all.
            if message["type"] == "http.response.start":
                line = {"event": "request", "method": scope["method"], "path": scope["path"]}
                print(json.dumps({**line, "status": message["status"]}), flush=True)
            await send(message)

        await app(scope, receive, send_logged)

    return logged


# --- the executors ----------------------------------------------------------------------------


async def say(updater: TaskUpdater, text: str) -> None:
    """Publish a WORKING status update carrying ``text``."""
    message = updater.new_agent_message([Part(text=text)])
    await updater.update_status(TaskState.TASK_STATE_WORKING, message)


class DemoAgent(AgentExecutor):
    """Opens a task for each request and hands its text to ``work``."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = await _open_task(context, event_queue)
        text = context.get_user_input().strip()
        if not text:
            await updater.reject(updater.new_agent_message([Part(text="send some text")]))
            return
        await self.work(text, updater)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        if task := context.current_task:
            await TaskUpdater(event_queue, task.id, task.context_id).cancel()

    @abstractmethod
    async def work(self, text: str, updater: TaskUpdater) -> None:
        """Do the work, publishing status updates and artifacts, and end the task."""


async def _open_task(context: RequestContext, event_queue: EventQueue) -> TaskUpdater:
    task = context.current_task
    if task is None:
        if context.message is None:
            raise InvalidParamsError("the request has no message")
        task = new_task_from_user_message(context.message)
        await event_queue.enqueue_event(task)  # the SDK wants the Task before any status update
    updater = TaskUpdater(event_queue, task.id, task.context_id)
    await updater.start_work()
    return updater


FINDINGS = (
    "The clearest way into {topic} is the problem it solves.",
    "Most introductions to {topic} rest on three or four key ideas.",
    "A common misconception about {topic} is that it is new.",
)


class Researcher(DemoAgent):
    """Returns the same few findings for a topic every time, one status update per finding."""

    async def work(self, text: str, updater: TaskUpdater) -> None:
        findings = [template.format(topic=text) for template in FINDINGS]
        for number, finding in enumerate(findings, start=1):
            await asyncio.sleep(STEP_DELAY_S)
            await say(updater, f"finding {number}/{len(findings)}: {finding}")
        body = "\n".join(f"- {finding}" for finding in findings)
        await updater.add_artifact([Part(text=body)], name="findings", last_chunk=True)
        summary = f"{len(findings)} findings on {text}"
        await updater.complete(updater.new_agent_message([Part(text=summary)]))


def write_article(text: str) -> str:
    """An article from a brief: the first line is the subject, ``- `` lines are the points."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    subject, rest = lines[0], lines[1:]
    points = [line.removeprefix("- ") for line in rest]
    body = " ".join(points) or f"Little is known about {subject} yet."
    return f"A short note on {subject}\n\n{body}\n\nThat is {subject} in brief."


class Writer(DemoAgent):
    """Turns a brief into a short article."""

    async def work(self, text: str, updater: TaskUpdater) -> None:
        await say(updater, "drafting")
        await asyncio.sleep(STEP_DELAY_S)
        await say(updater, "polishing")
        await asyncio.sleep(STEP_DELAY_S)
        article = write_article(text)
        await updater.add_artifact([Part(text=article)], name="article", last_chunk=True)
        await updater.complete(updater.new_agent_message([Part(text="article ready")]))


# --- the planner ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delegation:
    """One call the planner made through the broker, and what came back."""

    agent: str
    card_url: str
    interface_url: str
    binding: str
    outcome: TaskOutcome

    def answer(self) -> str:
        return next(iter(self.outcome.artifacts.values()), self.outcome.status_text)

    def report(self, broker_url: str) -> str:
        via = "yes" if self.interface_url.startswith(broker_url.rstrip("/") + "/") else "NO"
        answer = "\n".join(f"    {line}".rstrip() for line in self.answer().splitlines())
        return (
            f"{self.agent}: task {self.outcome.task_id} {state_name(self.outcome.state)}\n"
            f"  card:   {self.card_url}\n"
            f"  called: {self.interface_url} ({self.binding}; via the broker: {via})\n"
            f"  answer:\n{answer}"
        )


class Planner(DemoAgent):
    """Asks the researcher (over JSON-RPC) then the writer (over HTTP+JSON), both via the broker."""

    def __init__(self, broker_url: str, credential: str) -> None:
        self.broker_url = broker_url.rstrip("/")
        self.credential = credential

    async def work(self, text: str, updater: TaskUpdater) -> None:
        try:
            research = await self.delegate("researcher", JSONRPC, text, updater)
            brief = f"{text}\n{research.answer()}"
            article = await self.delegate("writer", HTTP_JSON, brief, updater)
        except DelegationError as exc:
            await updater.failed(updater.new_agent_message([Part(text=str(exc))]))
            return
        report = "\n\n".join(d.report(self.broker_url) for d in (research, article))
        body = f"request: {text}\nbroker: {self.broker_url}\n\n{report}"
        await updater.add_artifact([Part(text=body)], name="plan", last_chunk=True)
        done = "done: asked researcher and writer, both through the broker"
        await updater.complete(updater.new_agent_message([Part(text=done)]))

    async def delegate(
        self, agent: str, binding: str, text: str, updater: TaskUpdater
    ) -> Delegation:
        """Send ``text`` to ``agent`` through the broker, relaying its progress as our own."""
        card_url = broker_card_url(self.broker_url, agent)
        await say(updater, f"asking {agent} via broker at {card_url}")
        try:
            delegation = await self._call(agent, card_url, binding, text, updater)
        except (A2AError, httpx.HTTPError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DelegationError(f"asking {agent} via the broker failed: {reason}") from exc
        if not delegation.outcome.completed:
            state = state_name(delegation.outcome.state)
            raise DelegationError(f"{agent} ended in {state}: {delegation.outcome.status_text}")
        return delegation

    async def _call(
        self, agent: str, card_url: str, binding: str, text: str, updater: TaskUpdater
    ) -> Delegation:
        outcome = TaskOutcome()
        async with bearer_http_client(self.credential) as http:
            # The one line that carries the delegation context on: the token this planner's
            # task arrived with goes back to the broker with every call made for it.
            connection = await connect(
                http, card_url, binding, interceptors=[DelegationInterceptor()]
            )
            async for event in connection.client.send_message(user_message(text)):
                outcome.record(event)
                if event.HasField("status_update") and outcome.status_text:
                    await say(updater, f"{agent}: {outcome.status_text}")
        return Delegation(agent, card_url, connection.interface_url, binding, outcome)


class DelegationError(Exception):
    """A delegated call failed or its task did not complete; the message says which and why."""


# --- command line -----------------------------------------------------------------------------


def make_executor(name: str, broker_url: str, credential: str) -> DemoAgent:
    if name == "planner":
        return Planner(broker_url, credential)
    return Researcher() if name == "researcher" else Writer()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m broker.demo.agents", description=__doc__)
    parser.add_argument("name", choices=AGENT_NAMES)
    parser.add_argument("--port", type=int, help="default: the port in the agent's card")
    parser.add_argument(
        "--broker-url",
        default=os.environ.get(BROKER_URL_ENV, "http://127.0.0.1:8080"),
        help=f"the broker the planner delegates through (default: ${BROKER_URL_ENV})",
    )
    parser.add_argument("--cards-dir", type=Path, help="default: the repository's agent_cards")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve one demo agent until interrupted; the planner's credential is in the environment."""
    args = parse_args(argv)
    card = load_card(args.name, port=args.port, cards_dir=args.cards_dir)
    executor = make_executor(args.name, args.broker_url, os.environ.get(CREDENTIAL_ENV, ""))
    app = build_app(card, executor)
    uvicorn.run(app, host=HOST, port=card_port(card), log_level="info", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
