"""Fuzz target: generated envelopes, both bindings, a real broker, a judging agent behind it.

    python -m benchmarks.fuzz_envelopes --count 100000 [--seed 11] [--concurrency 32]

Not part of the test suite (it runs for minutes). Starts a broker (memory store, allow_all
policy, loopback egress, default limits) and ``benchmarks.fuzz_agent`` (a real a2a-sdk agent
that judges every request reaching it), registers two callers (alice, bob) who each create a
few tasks, then sends ``--count`` generated requests as one or the other: valid ones, foreign
task ids, both JSON spellings, snake_case, duplicate keys, escaped keys, unknown fields, odd
types, unicode, invalid UTF-8 inside strings, missing or odd ids, wrong media types, too many
parts, deep nesting, forbidden push URLs, bad skills and deadlines, REST paths, bodies and
query strings that disagree, page tokens of the agent or of the other caller. It reports the
answers by status and reason, and fails unless there were 0 HTTP 500s / internal errors, 0
crashes (connection failures, a dead broker, tracebacks in its log) and 0 requests that reached
the agent although the broker should have refused them (the agent's ``/_verdict``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from testkit.brokers import launch_broker
from testkit.config import BrokerConfig
from testkit.procs import closed_url, free_port, launch_service

AGENT = "fuzz"
OK_PUSH = ["http://127.0.0.1:9/hook", "http://a2a-push.example/hook"]
BAD_PUSH = [
    "http://169.254.169.254/latest",
    "http://[::ffff:169.254.169.254]/",
    "http://2852039166/",
    "http://0251.0376.0251.0376/",
    "http://10.0.0.1/hook",
    "ftp://127.0.0.1/x",
]
ODD_STRINGS = [
    "",
    " ",
    "\u202eevil",
    "😀",
    "a\u0000b",
    "t\u00e9",
    "x" * 300,
    "../../etc",
    "%2F",
    "\ud800",  # written as a lone surrogate escape
]
CONTENT_TYPES = [
    "application/json",
    "application/a2a+json",
    "application/json; charset=utf-8",
    "text/plain",
    "application/x-www-form-urlencoded",
    "application/json; charset=latin-1",
    None,
]


# --- JSON text, written by hand so keys may repeat and strings may be invalid ------------------


class Raw(bytes):
    """Bytes written verbatim into the JSON text."""


Obj = list[tuple[str, Any]]  # a JSON object as pairs: keys may repeat


def encode(value: Any, rnd: random.Random) -> bytes:
    if isinstance(value, Raw):
        return bytes(value)
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        items = [_key(k, rnd) + b":" + encode(v, rnd) for k, v in value]
        return b"{" + b",".join(items) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(encode(v, rnd) for v in value) + b"]"
    if value == {}:
        return b"{}"
    if isinstance(value, str) and value == "\ud800":
        return b'"\\ud800"'
    return json.dumps(value, ensure_ascii=rnd.random() < 0.5).encode()


def _key(key: str, rnd: random.Random) -> bytes:
    if key and rnd.random() < 0.05:  # an escaped last character: the same key to any parser
        return b'"' + key[:-1].encode() + f"\\u{ord(key[-1]):04x}".encode() + b'"'
    return json.dumps(key).encode()


@dataclass
class World:
    """The tasks each caller created, and page tokens seen (to replay as another caller)."""

    tasks: dict[str, list[str]]
    tokens: list[str] = field(default_factory=list)


@dataclass
class Request:
    method: str
    path: str  # after /agents/fuzz
    headers: dict[str, str]
    body: bytes
    caller: str


class Generator:
    def __init__(self, rnd: random.Random, world: World) -> None:
        self.rnd = rnd
        self.world = world

    def chance(self, p: float) -> bool:
        return self.rnd.random() < p

    def task_ref(self, caller: str) -> Any:
        other = "bob" if caller == "alice" else "alice"
        pick = self.rnd.random()
        if pick < 0.35:
            return self.rnd.choice(self.world.tasks[caller])
        if pick < 0.7:
            return self.rnd.choice(self.world.tasks[other])
        if pick < 0.8:
            return str(uuid.uuid4())
        if pick < 0.95:
            return self.rnd.choice(ODD_STRINGS)
        return self.rnd.choice([5, None, True, ["x"], {}])

    def field(self, camel: str, snake: str, value: Any) -> Obj:
        """One field, in either spelling, sometimes both, sometimes twice."""
        roll = self.rnd.random()
        if roll < 0.6 or not snake:
            pairs = [(camel if not snake or self.chance(0.7) else snake, value)]
        elif roll < 0.8:
            pairs = [(camel, value), (snake, value)]
        else:
            pairs = [(camel, value), (camel, self.rnd.choice(ODD_STRINGS))]
        self.rnd.shuffle(pairs)
        return pairs

    def message(self, caller: str) -> Any:
        if self.chance(0.03):
            return self.rnd.choice(["text", 5, None, []])
        count = 60_000 if self.chance(0.0005) else 1001 if self.chance(0.003) else 1
        parts = [[("text", "hi")]] * count
        message: Obj = [("messageId", str(uuid.uuid4())), ("role", "ROLE_USER"), ("parts", parts)]
        if self.chance(0.5):
            message += self.field("taskId", "task_id", self.task_ref(caller))
        if self.chance(0.2):
            message += self.field("contextId", "context_id", self.rnd.choice(ODD_STRINGS))
        if self.chance(0.15):
            refs = [self.task_ref(caller) for _ in range(self.rnd.randint(1, 3))]
            message += self.field("referenceTaskIds", "reference_task_ids", refs)
        if self.chance(0.2):
            skill = self.rnd.choice(["echo", " ", "fake secret", 5, "a\tb", "ok-skill"])
            message.append(("metadata", [("skill", skill)]))
        if self.chance(0.05):
            message.append(("x", Raw(b'"bad \xff\xfe utf8"')))
        if self.chance(0.05):
            message.append((self.rnd.choice(["TaskId", "taskID", "[ext]", "tasks"]), "u"))
        return message

    def send_params(self, caller: str) -> Obj:
        params: Obj = [("message", self.message(caller))]
        if self.chance(0.2):
            push: Obj = [("url", self.rnd.choice(OK_PUSH + BAD_PUSH))]
            if self.chance(0.3):
                push += self.field("taskId", "task_id", self.task_ref(caller))
            params.append(
                (
                    "configuration",
                    self.field("taskPushNotificationConfig", "task_push_notification_config", push),
                )
            )
        return params

    def params(self, op: str, caller: str) -> Any:
        if self.chance(0.02):
            return self.rnd.choice([None, [], "x", 5])
        if op in ("SendMessage", "SendStreamingMessage"):
            return self.send_params(caller)
        if op in ("GetTask", "CancelTask", "SubscribeToTask"):
            params: Obj = [("id", self.task_ref(caller))]
            if self.chance(0.2):
                params += self.field("taskId", "task_id", self.task_ref(caller))
            return params
        if op == "ListTasks":
            params = [("pageSize", self.rnd.choice([1, 2, 50]))]
            if self.chance(0.4) and self.world.tokens:
                params += self.field("pageToken", "page_token", self.rnd.choice(self.world.tokens))
            elif self.chance(0.1):
                params += self.field("pageToken", "page_token", self.rnd.choice(ODD_STRINGS))
            return params
        if op == "GetExtendedAgentCard":
            return []
        params = [*self.field("taskId", "task_id", self.task_ref(caller)), ("id", "p1")]
        if op == "CreateTaskPushNotificationConfig":
            params.append(("url", self.rnd.choice(OK_PUSH + BAD_PUSH)))
        return params

    def headers(self, body: bool) -> dict[str, str]:
        headers = {"A2A-Version": "1.0" if self.chance(0.97) else self.rnd.choice(["", "0.3", "2"])}
        content_type = "application/json" if self.chance(0.85) else self.rnd.choice(CONTENT_TYPES)
        if body and content_type:
            headers["Content-Type"] = content_type
        if self.chance(0.05):
            headers["A2A-Skill"] = self.rnd.choice(["echo", "fake secret", "\u00a0", "ok"])
        if self.chance(0.05):
            headers["A2A-Deadline"] = self.rnd.choice(["0.0001", "soon", "5", "nan", "-1", "1e9"])
        return headers

    def jsonrpc(self, caller: str) -> Request:
        ops = [
            "SendMessage", "SendStreamingMessage", "GetTask", "CancelTask", "SubscribeToTask",
            "ListTasks", "CreateTaskPushNotificationConfig", "GetTaskPushNotificationConfig",
            "ListTaskPushNotificationConfigs", "DeleteTaskPushNotificationConfig",
            "GetExtendedAgentCard",
        ]  # fmt: skip
        op = (
            self.rnd.choice(ops)
            if self.chance(0.95)
            else self.rnd.choice(["message/send", "", "X"])
        )
        envelope: Obj = [("jsonrpc", "2.0" if self.chance(0.97) else self.rnd.choice(["1.0", 2]))]
        if self.chance(0.95):
            envelope.append(("id", self.rnd.choice([1, 2, "r-1", 10**20, 1.5, True, None])))
        envelope += [("method", op), ("params", self.params(op, caller))]
        if self.chance(0.02):
            envelope.append(("extra", 1))
        body = encode(envelope, self.rnd)
        body = self._mangle(body)
        return Request("POST", "/jsonrpc", self.headers(True), body, caller)

    def _mangle(self, body: bytes) -> bytes:
        roll = self.rnd.random()
        if roll < 0.01:
            return b"[" + body + b"]"
        if roll < 0.02:
            return b"{" * 70 + b"}" * 70
        if roll < 0.03:
            return body[: self.rnd.randint(0, len(body))]
        if roll < 0.035:
            return bytes(self.rnd.getrandbits(8) for _ in range(self.rnd.randint(0, 64)))
        if roll < 0.04:
            return b"\xef\xbb\xbf" + body  # a BOM
        return body

    def rest(self, caller: str) -> Request:
        task = self.task_ref(caller)
        task = task if isinstance(task, str) else "x"
        task = urllib.parse.quote(task, safe=":", errors="surrogatepass") if task else "x"
        shapes = [
            ("POST", "/message:send"), ("POST", "/message%3Astream"), ("GET", "/tasks/{}"),
            ("POST", "/tasks/{}:cancel"), ("POST", "/tasks/{}:subscribe"), ("GET", "/tasks"),
            ("POST", "/tasks/{}/pushNotificationConfigs"),
            ("GET", "/tasks/{}/pushNotificationConfigs"),
            ("GET", "/tasks/{}/pushNotificationConfigs/p1"),
            ("DELETE", "/tasks/{}/pushNotificationConfigs/p1"), ("GET", "/extendedAgentCard"),
            ("PUT", "/tasks/{}"), ("GET", "/nope"),
        ]  # fmt: skip
        method, shape = self.rnd.choice(shapes)
        path = ("/tenant-a" if self.chance(0.1) else "") + shape.format(task)
        query = self._query(caller, shape)
        body = b""
        if shape.startswith("/message"):
            body = encode(self.send_params(caller), self.rnd)
        elif shape.endswith("pushNotificationConfigs") and method == "POST":
            pairs: Obj = [("url", self.rnd.choice(OK_PUSH + BAD_PUSH))]
            if self.chance(0.3):
                pairs += self.field("taskId", "task_id", self.task_ref(caller))
            body = encode(pairs, self.rnd)
        elif method == "POST" and self.chance(0.2):
            body = encode([("id", self.task_ref(caller))], self.rnd)
        body = self._mangle(body) if body else body
        return Request(method, f"/rest{path}{query}", self.headers(bool(body)), body, caller)

    def _query(self, caller: str, shape: str) -> str:
        pairs = []
        if shape == "/tasks":
            pairs.append(("pageSize", str(self.rnd.choice([1, 3]))))
            if self.world.tokens and self.chance(0.5):
                pairs.append(("pageToken", self.rnd.choice(self.world.tokens)))
            if self.chance(0.05):
                pairs.append(("pageToken", "other"))
        elif self.chance(0.1):
            value = self.task_ref(caller)
            pairs.append((self.rnd.choice(["id", "taskId", "task_id"]), str(value)))
        if not pairs:
            return ""
        return "?" + urllib.parse.urlencode(pairs, errors="surrogatepass")

    def next(self) -> Request:
        caller = self.rnd.choice(["alice", "bob"])
        return self.jsonrpc(caller) if self.chance(0.6) else self.rest(caller)


# --- Running it ---------------------------------------------------------------------------------


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    internal: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    forwarded: int = 0


def _reasons(status: int, body: bytes) -> list[str]:
    """The reasons of an answer (one per JSON body or SSE error event)."""
    found = []
    for chunk in body.split(b"data: ") if body.startswith((b"data:", b"event:", b":")) else [body]:
        try:
            document = json.loads(chunk.split(b"\r\n")[0] if chunk.startswith(b"{") else chunk)
        except ValueError:
            continue
        error = document.get("error") if isinstance(document, dict) else None
        if isinstance(error, dict):
            details = error.get("data") or error.get("details") or [{}]
            first = details[0] if isinstance(details, list) and details else {}
            found.append(str(first.get("reason", f"code {error.get('code')}")))
    return found or [f"HTTP {status}"]


async def fire(session: aiohttp.ClientSession, base: str, creds: dict[str, str], req: Request,
               *, tally: Tally, world: World) -> None:  # fmt: skip
    headers = {**req.headers, "Authorization": f"Bearer {creds[req.caller]}"}
    url = f"{base}/agents/{AGENT}{req.path}"
    try:
        async with session.request(req.method, url, data=req.body or None, headers=headers) as resp:
            body = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.crashes.append(f"{type(exc).__name__}: {exc}"[:200])
        return
    tally.statuses[status] += 1
    reasons = _reasons(status, body)
    for reason in reasons:
        tally.reasons[reason] += 1
    if status == 500 or "INTERNAL_ERROR" in reasons or b'"code":-32603' in body:
        tally.internal.append(
            f"{req.method} {req.path} {req.body[:200]!r} -> {status} {body[:300]!r}"
        )
    if status == 200 and b"nextPageToken" in body and len(world.tokens) < 50:
        _keep_token(body, world)


def _keep_token(body: bytes, world: World) -> None:
    try:
        document = json.loads(body)
    except ValueError:
        return
    page = document.get("result", document) if isinstance(document, dict) else {}
    token = page.get("nextPageToken") if isinstance(page, dict) else None
    if isinstance(token, str) and token:
        world.tokens.append(token)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())


def _broker_config(port: int) -> BrokerConfig:
    # [policy] allow_all (the default): the fuzz is about reading requests, not policy.
    config = BrokerConfig(port=port).set("server", log_level="warning")
    return config.set("store", backend="memory").set("audit", backend="off")


async def seed(base: str, creds: dict[str, str]) -> World:
    world = World({"alice": [], "bob": []})
    async with aiohttp.ClientSession() as session:
        for caller in ("alice", "bob"):
            for i in range(5):
                body = {"jsonrpc": "2.0", "id": i, "method": "SendMessage", "params": {
                    "message": {"messageId": str(uuid.uuid4()), "role": "ROLE_USER",
                                "parts": [{"text": f"{caller} {i}"}]}}}  # fmt: skip
                headers = {"Authorization": f"Bearer {creds[caller]}", "A2A-Version": "1.0"}
                async with session.post(
                    f"{base}/agents/{AGENT}/jsonrpc", json=body, headers=headers
                ) as resp:
                    world.tasks[caller].append((await resp.json())["result"]["task"]["id"])
    return world


async def run(base: str, creds: dict[str, str], count: int, seed_value: int, concurrency: int
              ) -> Tally:  # fmt: skip
    world = await seed(base, creds)
    generator = Generator(random.Random(seed_value), world)
    tally = Tally()
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        pending: set[asyncio.Task[None]] = set()
        for i in range(count):
            if len(pending) >= concurrency:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            request = generator.next()
            sent = fire(session, base, creds, request, tally=tally, world=world)
            pending.add(asyncio.create_task(sent))
            if i and i % 10_000 == 0:
                print(f"  {i} sent", file=sys.stderr, flush=True)
        if pending:
            await asyncio.wait(pending)
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz_envelopes")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="fuzz-envelopes-"))
    agent = launch_service("benchmarks.fuzz_agent", name="agent", log_dir=logs)
    broker = launch_broker(_broker_config(free_port()), log_dir=logs)
    base = broker.url
    try:
        agent.wait_ready()
        broker.wait_ready()
        agent_card = _get_json(f"{agent.url}/.well-known/agent-card.json")
        broker.register(AGENT, agent_card)
        closed = closed_url()
        creds = {}
        for caller in ("alice", "bob"):
            card = {
                **agent_card,
                "name": caller,
                "supportedInterfaces": [
                    {"url": closed + "/rpc", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
                ],
            }
            creds[caller] = broker.register(caller, card)
        started = time.monotonic()
        tally = asyncio.run(run(base, creds, args.count, args.seed, args.concurrency))
        elapsed = time.monotonic() - started
        verdict = _get_json(f"{agent.url}/_verdict")
        alive = broker.process.popen.poll() is None
    finally:
        broker.stop()
        agent.stop()
    tracebacks = broker.log.read_text(errors="replace").count("Traceback")
    return report(args, tally, verdict, elapsed, alive=alive, tracebacks=tracebacks, logs=logs)


def report(args: argparse.Namespace, tally: Tally, verdict: dict[str, Any], elapsed: float,
           *, alive: bool, tracebacks: int, logs: Path) -> int:  # fmt: skip
    violations = sum(verdict["violations"].values())
    crashes = len(tally.crashes) + (0 if alive else 1) + tracebacks
    summary = {
        "requests": args.count,
        "seed": args.seed,
        "seconds": round(elapsed, 1),
        "statuses": dict(sorted(tally.statuses.items())),
        "http_500_or_internal_error": len(tally.internal),
        "crashes": crashes,
        "reached_the_agent": verdict["requests"],
        "reached_the_agent_but_should_have_been_refused": violations,
        "violations": verdict["violations"],
        "top_reasons": dict(tally.reasons.most_common(25)),
        "logs": str(logs),
    }
    print(json.dumps(summary, indent=2))
    for line in tally.internal[:5] + tally.crashes[:5] + [str(e) for e in verdict["examples"][:5]]:
        print("  !", line)
    return 0 if not tally.internal and not crashes and not violations else 1


if __name__ == "__main__":
    sys.exit(main())
