"""Human approval end to end: real brokers (two replicas on one Redis), a real a2a-sdk agent
and client. The hop alice -> echo needs approval (an ``approve`` rule): the agent sees nothing
until a person approves; then it receives the exact bytes alice sent, once, and alice's task
continues as the agent's. Denied, expired and cancelled calls end the task with their reason;
the requester cannot approve her own call; a used approval cannot be used again; every
notification reaches a webhook receiver, HMAC-signed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from a2a.types import CancelTaskRequest, GetTaskRequest, SubscribeToTaskRequest, TaskState
from google.protobuf.json_format import MessageToDict
from playwright.async_api import Browser, Page, async_playwright, expect

from broker.errors import (
    ApprovalNotFoundError,
    ApprovalNotUsableError,
    ApprovalPendingError,
    ApproverNotAllowedError,
)
from testkit.audit_files import audit_text
from testkit.brokers import BrokerProcess, launch_broker
from testkit.config import BrokerConfig, credential_sha256
from testkit.procs import Service, closed_url, free_port, launch_service, start_services

from .agents import agent_card
from .sdk import client_for, next_event, remaining_events, send_request, state_of, unique_text
from .test_console import CHROMIUM, CHROMIUM_ARGS, IMAGES
from .wire import assert_rest_error

TTL_S = 8.0
APPROVER_TOKENS = {name: f"{name}-{secrets.token_hex(8)}" for name in ("oscar", "alice", "pat")}
WEBHOOK_SECRET = secrets.token_hex(16)
WEBHOOK_SECRET_ENV = "E2E_APPROVAL_WEBHOOK_SECRET"
POLICY = "\n".join([
    "g, alice, role:user",
    "g2, echo, group:workers",
    "p, role:user, *, originate, allow",
    "p, role:user, group:workers, *, allow",
    "p, role:user, group:workers, SendMessage:*, approve",
    "p, role:user, group:workers, SendStreamingMessage:*, approve",
    "p, role:user, model:fake-small, llm:chat, allow",
    "p, role:user, model:fake-large, llm:chat, approve",
    "",
])
PROVIDER_KEY_ENV = "E2E_APPROVAL_PROVIDER_KEY"
COST_OVER_USD = 0.5  # fake-small at 10 USD per million output tokens: 50,000 tokens


@dataclass
class Received:
    """What the webhook receiver got: (headers, body) per POST."""

    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@dataclass
class Rig:
    brokers: list[BrokerProcess]
    echo: Service
    alice: str  # alice's broker credential
    webhook: Received
    provider: Service
    folder: Path  # the brokers' configs, logs and audit chains (var/audit)

    @property
    def admin_headers(self) -> dict[str, str]:
        return self.brokers[0].admin_headers


def _webhook_server(received: Received) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            received.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Rig]:
    folder = tmp_path_factory.mktemp("approvals")
    policy = folder / "policy.csv"
    policy.write_text(POLICY)
    received = Received()
    server = _webhook_server(received)
    echo = launch_service("tests.e2e.agents", "echo", name="approvals-echo", log_dir=folder)
    provider = launch_service("tests.e2e.fake_llm", name="approvals-llm", log_dir=folder)
    with start_services([echo, provider]):
        config = BrokerConfig(port=free_port()).use_redis(
            redis_url, key_prefix=f"approvals-{uuid.uuid4().hex[:8]}"
        ).use_policy_file(policy)
        config.set("approvals", ttl_s=TTL_S, llm_cost_over_usd=COST_OVER_USD,
                   llm_retry_after_s=2.0)
        config.set("llm.providers.fake", base_url=f"{provider.url}/v1", key_env=PROVIDER_KEY_ENV,
                   models=["fake-small", "fake-large"], price_in_per_mtok=2.0,
                   price_out_per_mtok=10.0, timeout_s=5.0)
        for name, token in APPROVER_TOKENS.items():
            config.set(f"approvals.approvers.{name}", token_sha256=credential_sha256(token))
        config.set("approvals.webhook", url=f"http://127.0.0.1:{server.server_port}/hook",
                   key_env=WEBHOOK_SECRET_ENV, attempts=3)
        config.set("limits", sse_heartbeat_s=1.0)
        env = {WEBHOOK_SECRET_ENV: WEBHOOK_SECRET, PROVIDER_KEY_ENV: "sk-approvals"}
        token = secrets.token_urlsafe(24)
        brokers = [
            launch_broker(config.copy(port=free_port()) if i else config, log_dir=folder,
                          name=f"broker-{i}", admin_token=token, env=env)
            for i in range(2)
        ]
        try:
            for broker in brokers:
                broker.wait_ready()
            card = httpx.get(f"{echo.url}/.well-known/agent-card.json", trust_env=False).json()
            brokers[0].register("echo", card)
            alice = brokers[0].register("alice", MessageToDict(agent_card("alice", closed_url())))
            yield Rig(brokers, echo, alice, received, provider, folder)
        finally:
            for broker in brokers:
                broker.stop()
            server.shutdown()


@dataclass
class Sent:
    bodies: list[bytes] = field(default_factory=list)


@pytest.fixture
async def http(rig: Rig) -> AsyncIterator[tuple[httpx.AsyncClient, Sent]]:
    sent = Sent()

    async def keep(request: httpx.Request) -> None:
        if request.method == "POST":
            sent.bodies.append(request.content)

    headers = {"Authorization": f"Bearer {rig.alice}"}
    async with httpx.AsyncClient(timeout=30, trust_env=False, headers=headers,
                                 event_hooks={"request": [keep]}) as client:
        yield client, sent


async def recorded_with(rig: Rig, text: str) -> list[bytes]:
    async with httpx.AsyncClient(trust_env=False) as plain:
        requests = (await plain.get(f"{rig.echo.url}/_recorded")).json()
    bodies = [base64.b64decode(r["body_b64"]) for r in requests]
    return [b for b in bodies if text.encode() in b]


def audited(rig: Rig, approval: str) -> list[dict[str, Any]]:
    """Every audit record of either broker that names ``approval``."""
    found = []
    for path in sorted(rig.folder.rglob("audit-*.jsonl")):
        for line in audit_text(path).splitlines():
            if approval in line:
                found.append(json.loads(line))
    return found


async def decide(
    rig: Rig, via: int, approval: str, who: str, decision: str, *, reason: str = ""
) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False) as plain:
        return await plain.post(
            f"{rig.brokers[via].url}/admin/approvals/{approval}",
            headers={"Authorization": f"Bearer {APPROVER_TOKENS[who]}"},
            json={"decision": decision, "reason": reason},
        )


async def task_state(client: Any, task_id: str, until: TaskState, within_s: float = 10) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        task = await client.get_task(GetTaskRequest(id=task_id))
        if task.status.state == until or time.monotonic() > deadline:
            return task
        await asyncio.sleep(0.1)


def approval_meta(task: Any) -> dict[str, Any]:
    return dict(MessageToDict(task)["metadata"]["a2a-broker/approval"])


async def test_approved_on_the_other_replica_the_agent_gets_the_exact_bytes_once(
    rig: Rig, http: tuple[httpx.AsyncClient, Sent]
) -> None:
    client_http, sent = http
    client = await client_for(client_http, rig.brokers[0].agent_url("echo"), "JSONRPC")
    text = unique_text("approve-me")
    [event] = [e async for e in client.send_message(send_request(text))]
    task = event.task
    original = sent.bodies[-1]
    assert task.id.startswith("approval-")
    assert task.status.state == TaskState.TASK_STATE_AUTH_REQUIRED
    assert "Awaiting human approval until" in task.status.message.parts[0].text
    assert await recorded_with(rig, text) == []  # the agent has seen nothing

    # The queue is shared: broker 2 lists it; the requester cannot approve her own call.
    async with httpx.AsyncClient(trust_env=False) as plain:
        listed = await plain.get(f"{rig.brokers[1].url}/admin/approvals?state=pending",
                                 headers=rig.admin_headers)
    assert task.id in [a["id"] for a in listed.json()["approvals"]]
    assert_rest_error(await decide(rig, 1, task.id, "alice", "approve"), ApproverNotAllowedError)
    approved = await decide(rig, 1, task.id, "oscar", "approve", reason="fine by me")
    assert approved.status_code == 200, approved.text
    assert approved.json()["approved_by"] == ["oscar"]

    done = await task_state(client, task.id, TaskState.TASK_STATE_COMPLETED)
    assert done.status.state == TaskState.TASK_STATE_COMPLETED
    assert await recorded_with(rig, text) == [original]  # exactly the bytes, exactly once
    # A replayed approval is refused, and the agent still saw the call once.
    assert_rest_error(await decide(rig, 0, task.id, "pat", "approve"), ApprovalNotUsableError)
    await asyncio.sleep(0.5)
    assert len(await recorded_with(rig, text)) == 1
    # Every step is in the audit, on whichever replica made it.
    records = audited(rig, task.id)
    actions = [(r["caller"], r["detail"].get("action")) for r in records if r["kind"] == "approval"]
    assert ("alice", "approval.request") in actions
    assert ("alice", "approval.refused") in actions and ("oscar", "approval.approve") in actions
    assert ("alice", "approval.use") in actions and ("pat", "approval.refused") in actions
    forwarded = [r for r in records if r["kind"] == "request"]
    assert forwarded and all(r["caller"] == "alice" for r in forwarded)


async def test_denied_ends_the_task_rejected_with_the_reason(
    rig: Rig, http: tuple[httpx.AsyncClient, Sent]
) -> None:
    client = await client_for(http[0], rig.brokers[0].agent_url("echo"), "HTTP+JSON")
    text = unique_text("deny-me")
    [event] = [e async for e in client.send_message(send_request(text))]
    denied = await decide(rig, 1, event.task.id, "oscar", "deny", reason="not today")
    assert denied.status_code == 200, denied.text
    task = await task_state(client, event.task.id, TaskState.TASK_STATE_REJECTED)
    assert task.status.state == TaskState.TASK_STATE_REJECTED
    assert approval_meta(task)["reason"] == "APPROVAL_DENIED"
    assert "not today" in task.status.message.parts[0].text
    assert await recorded_with(rig, text) == []


async def test_unapproved_calls_expire_and_fail(
    rig: Rig, http: tuple[httpx.AsyncClient, Sent]
) -> None:
    client = await client_for(http[0], rig.brokers[1].agent_url("echo"), "JSONRPC")
    text = unique_text("expire-me")
    [event] = [e async for e in client.send_message(send_request(text))]
    task = await task_state(client, event.task.id, TaskState.TASK_STATE_FAILED, TTL_S + 5)
    assert task.status.state == TaskState.TASK_STATE_FAILED
    assert approval_meta(task)["reason"] == "APPROVAL_EXPIRED"
    assert_rest_error(await decide(rig, 0, event.task.id, "oscar", "approve"),
                      ApprovalNotUsableError)
    assert await recorded_with(rig, text) == []


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_cancelled_while_waiting(
    rig: Rig, http: tuple[httpx.AsyncClient, Sent], binding: str
) -> None:
    client = await client_for(http[0], rig.brokers[0].agent_url("echo"), binding)
    [event] = [e async for e in client.send_message(send_request(unique_text("cancel-me")))]
    cancelled = await client.cancel_task(CancelTaskRequest(id=event.task.id))
    assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
    assert_rest_error(await decide(rig, 1, event.task.id, "oscar", "approve"),
                      ApprovalNotUsableError)
    assert_rest_error(await decide(rig, 1, "approval-nope", "oscar", "approve"),
                      ApprovalNotFoundError)


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_a_held_stream_carries_on_with_the_agents_events_once_approved(
    rig: Rig, http: tuple[httpx.AsyncClient, Sent], binding: str
) -> None:
    client = await client_for(http[0], rig.brokers[0].agent_url("echo"), binding,
                              streaming=True)
    text = unique_text("stream-me")
    events = aiter(client.send_message(send_request(text)))
    first = await next_event(events)
    assert state_of(first) == TaskState.TASK_STATE_AUTH_REQUIRED
    approval = first.task.id
    assert await recorded_with(rig, text) == []
    approved = await decide(rig, 1, approval, "oscar", "approve")
    assert approved.status_code == 200, approved.text
    rest = await remaining_events(events)
    assert state_of(rest[-1]) == TaskState.TASK_STATE_COMPLETED
    assert len(await recorded_with(rig, text)) == 1


async def test_every_notification_is_signed(rig: Rig, http: tuple[httpx.AsyncClient, Sent]) -> None:
    client = await client_for(http[0], rig.brokers[0].agent_url("echo"), "JSONRPC")
    [event] = [e async for e in client.send_message(send_request(unique_text("hook")))]
    deadline = time.monotonic() + 10
    mine: list[tuple[dict[str, str], bytes]] = []
    while not mine and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        mine = [p for p in rig.webhook.posts if event.task.id.encode() in p[1]]
    assert mine, "no notification for the new approval"
    headers, body = mine[0]
    stamp, _, mac = headers["a2a-broker-signature"].partition(",v1=")
    expected = hmac.new(WEBHOOK_SECRET.encode(), stamp.removeprefix("t=").encode() + b"." + body,
                        hashlib.sha256).hexdigest()
    assert mac == expected
    assert headers["x-a2a-broker-event"] == "approval.requested"
    payload = json.loads(body)
    assert payload["event"] == "approval.requested"
    assert payload["approval"]["requester"] == "alice"
    assert payload["decide_url"].endswith(f"/admin/approvals/{event.task.id}")


def cli(
    rig: Rig, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *argv, "--url", rig.brokers[1].url],
        capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "A2A_BROKER_ADMIN_TOKEN": rig.brokers[0].admin_token, **(env or {})},
    )


async def test_the_cli_lists_and_decides(rig: Rig, http: tuple[httpx.AsyncClient, Sent]) -> None:
    client = await client_for(http[0], rig.brokers[0].agent_url("echo"), "JSONRPC")
    text = unique_text("cli")
    [event] = [e async for e in client.send_message(send_request(text))]
    approval = event.task.id
    listed = await asyncio.to_thread(cli, rig, "approvals", "list", "--pending", "--json")
    assert listed.returncode == 0, listed.stderr
    assert approval in [a["id"] for a in json.loads(listed.stdout)["approvals"]]
    nobody = await asyncio.to_thread(cli, rig, "approvals", "approve", approval)
    assert nobody.returncode == 2 and "A2A_BROKER_APPROVER_TOKEN" in nobody.stderr
    as_admin = await asyncio.to_thread(
        cli, rig, "approvals", "approve", approval,
        env={"A2A_BROKER_APPROVER_TOKEN": rig.brokers[0].admin_token},
    )
    assert as_admin.returncode == 1 and ApproverNotAllowedError.reason in as_admin.stderr
    approved = await asyncio.to_thread(
        cli, rig, "approvals", "approve", approval, "--reason", "ok",
        env={"A2A_BROKER_APPROVER_TOKEN": APPROVER_TOKENS["pat"]},
    )
    assert approved.returncode == 0, approved.stderr
    assert "approval " + approval + ": approved" in approved.stdout + approved.stderr
    done = await task_state(client, approval, TaskState.TASK_STATE_COMPLETED)
    assert done.status.state == TaskState.TASK_STATE_COMPLETED


async def provider_saw(rig: Rig, marker: str) -> int:
    async with httpx.AsyncClient(trust_env=False) as plain:
        recorded = (await plain.get(f"{rig.provider.url}/_recorded")).json()
    return sum(marker in str(r["body"]) for r in recorded)


def chat(model: str, marker: str, **more: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": marker}], **more}


async def test_an_llm_call_waits_for_approval_and_its_retry_goes_ahead_once(
    rig: Rig, http: tuple[httpx.AsyncClient, Sent]
) -> None:
    client = http[0]
    marker = unique_text("llm")
    url = f"{rig.brokers[0].url}/v1/chat/completions"
    held = await client.post(url, json=chat("fake-large", marker))
    assert held.status_code == 403, held.text
    assert held.json()["error"]["code"] == ApprovalPendingError.reason.lower()
    assert held.headers["x-should-retry"] == "false"
    approval = held.headers["a2a-broker-approval"]
    assert held.headers["retry-after"] == "2"
    retry = {"a2a-broker-approval": approval}
    same = await client.post(url, json=chat("fake-large", marker))  # no header: same request
    assert same.status_code == 403 and same.headers["a2a-broker-approval"] == approval
    still = await client.post(url, json=chat("fake-large", marker), headers=retry)
    assert still.status_code == 403 and still.headers["a2a-broker-approval"] == approval
    assert await provider_saw(rig, marker) == 0
    assert (await decide(rig, 1, approval, "oscar", "approve")).status_code == 200
    # Approved for that exact call: another body under the same approval is refused...
    other = await client.post(url, json=chat("fake-large", marker + "!"), headers=retry)
    assert other.status_code == 403 and "approval_not_usable" in other.text
    # ...the call itself goes ahead once, through the real openai client...
    ai = openai.AsyncOpenAI(base_url=f"{rig.brokers[1].url}/v1", api_key=rig.alice,
                            max_retries=0, http_client=httpx.AsyncClient(trust_env=False))
    reply = await ai.chat.completions.create(
        model="fake-large", messages=[{"role": "user", "content": marker}], extra_headers=retry
    )
    assert reply.choices[0].message.content
    assert await provider_saw(rig, marker) == 1
    # ...and never twice.
    again = await client.post(url, json=chat("fake-large", marker), headers=retry)
    assert again.status_code == 403 and "approval_not_usable" in again.text


async def test_a_costly_llm_call_needs_approval_and_a_cheap_one_does_not(
    rig: Rig, http: tuple[httpx.AsyncClient, Sent]
) -> None:
    client = http[0]
    url = f"{rig.brokers[0].url}/v1/chat/completions"
    cheap = await client.post(url, json=chat("fake-small", unique_text("cheap")))
    assert cheap.status_code == 200, cheap.text
    costly = await client.post(url, json=chat("fake-small", unique_text("costly"),
                                              max_tokens=100_000))
    assert costly.status_code == 403 and "approval_pending" in costly.text
    listed = (await client.get(f"{rig.brokers[0].url}/admin/approvals/"
                               f"{costly.headers['a2a-broker-approval']}",
                               headers=rig.admin_headers)).json()
    assert "llm_cost_over_usd" in listed["rule"]


# --- the console's approvals page, in Debian's Chromium ---------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None and not os.environ.get("CI"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def test_an_approver_decides_on_the_console(
    rig: Rig, http: tuple[httpx.AsyncClient, Sent], browser: Browser
) -> None:
    client = await client_for(http[0], rig.brokers[0].agent_url("echo"), "JSONRPC")
    text = unique_text("console")
    [event] = [e async for e in client.send_message(send_request(text))]
    approval = event.task.id
    base = f"{rig.brokers[1].url}/console"
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(10_000)
    await page.goto(f"{base}/login")
    await page.fill("#token", rig.brokers[0].admin_token)
    await page.click("#login")
    await page.goto(f"{base}/approvals")
    row = page.locator(f"#approval-row-{approval}")
    await expect(row.locator(".state")).to_have_text("pending")
    await expect(row.locator(".summary")).to_contain_text("alice asks echo for SendMessage")
    await _shot(page, "approvals")
    # The requester's own approver token is refused, and so is a forged form.
    await row.locator("input[name=approver_token]").fill(APPROVER_TOKENS["alice"])
    await row.locator("button.approve").click()
    await expect(page.locator("body")).to_contain_text("APPROVER_NOT_ALLOWED")
    await page.goto(f"{base}/approvals")
    await row.locator("input[name=csrf_token]").evaluate("e => e.value = 'forged'")
    await row.locator("input[name=approver_token]").fill(APPROVER_TOKENS["oscar"])
    await row.locator("button.approve").click()
    await expect(page.locator("body")).to_contain_text("CONSOLE_CSRF_REJECTED")
    await page.goto(f"{base}/approvals")
    await expect(row.locator(".state")).to_have_text("pending")
    assert await recorded_with(rig, text) == []
    # Oscar approves: the call goes to the agent and the caller's task completes.
    await row.locator("input[name=approver_token]").fill(APPROVER_TOKENS["oscar"])
    await row.locator("input[name=reason]").fill("checked the ticket")
    await row.locator("button.approve").click()
    await expect(page).to_have_url(f"{base}/approvals")
    await expect(row.locator(".state")).not_to_have_text("pending")
    assert APPROVER_TOKENS["oscar"] not in await page.content()
    done = await task_state(client, approval, TaskState.TASK_STATE_COMPLETED)
    assert done.status.state == TaskState.TASK_STATE_COMPLETED
    assert len(await recorded_with(rig, text)) == 1
    # And denies another: its task ends REJECTED with his reason.
    [denied] = [e async for e in client.send_message(send_request(unique_text("deny")))]
    await page.goto(f"{base}/approvals")
    other = page.locator(f"#approval-row-{denied.task.id}")
    await other.locator("input[name=approver_token]").fill(APPROVER_TOKENS["oscar"])
    await other.locator("input[name=reason]").fill("not this one")
    await other.locator("button.deny").click()
    await expect(other.locator(".state")).to_have_text("denied")
    ended = await task_state(client, denied.task.id, TaskState.TASK_STATE_REJECTED)
    assert "not this one" in ended.status.message.parts[0].text


async def _shot(page: Page, name: str) -> None:
    await asyncio.to_thread(IMAGES.mkdir, parents=True, exist_ok=True)
    await page.screenshot(path=str(IMAGES / f"console-{name}.png"), full_page=True)


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_a_subscriber_sees_the_wait_then_the_agents_answer(
    rig: Rig, http: tuple[httpx.AsyncClient, Sent], binding: str
) -> None:
    sender = await client_for(http[0], rig.brokers[0].agent_url("echo"), binding)
    [event] = [e async for e in sender.send_message(send_request(unique_text("subscribe")))]
    watcher = await client_for(http[0], rig.brokers[1].agent_url("echo"), binding,
                               streaming=True)
    events = aiter(watcher.subscribe(SubscribeToTaskRequest(id=event.task.id)))
    first = await next_event(events)
    assert state_of(first) == TaskState.TASK_STATE_AUTH_REQUIRED
    assert (await decide(rig, 0, event.task.id, "oscar", "approve")).status_code == 200
    rest = await remaining_events(events)
    assert state_of(rest[-1]) == TaskState.TASK_STATE_COMPLETED
