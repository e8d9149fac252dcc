"""``a2a-broker demo``: the three demo agents and a broker in front of them, until interrupted.

Every start mints fresh secrets, writes the broker's config, ``credentials.json`` and the cards
into the state folder, starts the agents and then the broker as child processes (their output
goes to ``<state>/logs/``), and stops them all on Ctrl-C or SIGTERM, or when one of them dies.
An agent whose card's port is taken (another demo, say) listens on a free port instead; its
card in ``<state>/cards`` says which.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn

import httpx
import msgspec
from google.protobuf.json_format import (  # type: ignore[import-untyped,unused-ignore]
    MessageToDict,
)

import broker
from broker.cli.output import EXIT_CANNOT_START
from broker.demo import (
    AGENT_NAMES,
    BROKER_URL_ENV,
    CALLER_NAME,
    CONFIG_FILE,
    CREDENTIAL_ENV,
    CREDENTIALS_FILE,
    DEFAULT_STATE_DIR,
    DemoCredentials,
    find_cards_dir,
    find_policy_file,
)
from broker.demo.agents import HOST, card_port, load_card

AGENT_START_TIMEOUT_S = 20.0
BROKER_START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.2
TOKEN_PREFIX = "a2ab_"  # noqa: S105 - a prefix, not a secret


@dataclass(frozen=True)
class Child:
    """A process the demo started, and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path


class ChildFailedError(Exception):
    """A child process died or did not answer in time; the message (one line) names it, quotes
    why it stopped and where its log is."""


def run_demo(host: str = HOST, port: int = 8080, state_dir: str | Path = DEFAULT_STATE_DIR) -> int:
    """Run the demo in the foreground: 0 after Ctrl-C or SIGTERM, 3 if it could not start (one
    line on stderr says why), 1 if a child died later."""
    if not _is_free(host, port):
        print(
            f"a2a-broker: cannot start the demo: {host}:{port} is in use (give another --port)",
            file=sys.stderr,
        )
        return EXIT_CANNOT_START
    state = Path(state_dir).resolve()
    credentials = new_credentials(f"http://{host}:{port}")
    cards_dir = place_cards(state, find_cards_dir(), host)
    config = write_state(state, host, port, cards_dir, credentials)
    children: list[Child] = []
    started = False
    with _sigterm_interrupts():
        try:
            _start_all(children, state, config, cards_dir, credentials)
            started = True
            print_banner(credentials.broker_url, state, Path(state_dir), cards_dir)
            _watch(children)
        except KeyboardInterrupt:
            print("\nstopping the demo")
            return 0
        except ChildFailedError as exc:
            if not started:
                print(f"a2a-broker: cannot start the demo: {exc}", file=sys.stderr)
                return EXIT_CANNOT_START
            print(f"a2a-broker: the demo stopped: {exc}", file=sys.stderr)
            return 1
        finally:
            with _signals_ignored():
                _stop_all(children)


def place_cards(state: Path, shipped: Path, host: str) -> Path:
    """The cards this run serves, in ``<state>/cards``: the shipped ones, each moved to a free
    port if its own is taken (another demo, another program), so two demos can run side by side."""
    placed = state / "cards"
    placed.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in AGENT_NAMES:
        card = load_card(name, cards_dir=shipped)
        if not _is_free(host, card_port(card)):
            card = load_card(name, port=_free_port(host), cards_dir=shipped)
        text = json.dumps(MessageToDict(card), indent=2) + "\n"
        (placed / f"{name}.json").write_text(text, encoding="utf-8")
    return placed


def _is_free(host: str, port: int) -> bool:
    """Nothing listens on ``host:port`` (a moment ago)."""
    try:
        with socket.create_server((host, port)):
            return True
    except OSError:
        return False


def _free_port(host: str) -> int:
    with socket.create_server((host, 0)) as sock:
        return int(sock.getsockname()[1])


def print_banner(broker_url: str, state: Path, state_arg: Path, cards_dir: Path) -> None:
    ports = ", ".join(
        f"{name} :{card_port(load_card(name, cards_dir=cards_dir))}" for name in AGENT_NAMES
    )
    option = "" if state_arg == Path(DEFAULT_STATE_DIR) else f" --state-dir {state_arg}"
    print(
        f"a2a-broker demo is running\n"
        f"  broker:      {broker_url}  (config {state / CONFIG_FILE})\n"
        f"  agents:      {ports}  (cards from {cards_dir})\n"
        f"  credentials: {state / CREDENTIALS_FILE}  (admin token, one per agent, {CALLER_NAME})\n"
        f"  logs:        {state / 'logs'}\n\n"
        f"Ask the planner, which delegates to the researcher and the writer through the broker:\n"
        f'  a2a-broker demo-ask "tide pools"{option}\n\n'
        f"Press Ctrl-C to stop.",
        flush=True,
    )


# --- secrets and files ------------------------------------------------------------------------


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_credentials(broker_url: str) -> DemoCredentials:
    """Fresh secrets: the admin token and a broker credential per agent and for ``demo-user``."""
    names = (*AGENT_NAMES, CALLER_NAME)
    return DemoCredentials(
        broker_url=broker_url,
        admin_token=new_token(),
        credentials={name: new_token() for name in names},
    )


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def config_toml(host: str, port: int, cards_dir: Path, credentials: DemoCredentials) -> str:
    """The broker's TOML config for the demo (see broker/settings.py)."""
    quote = json.dumps  # a JSON string is a valid TOML basic string
    lines = [
        "# Written by `a2a-broker demo` on every start; the secrets are in credentials.json.",
        f"[server]\nhost = {quote(host)}\nport = {port}\n",
        '[store]\nbackend = "memory"\n',
        f"[admin]\ntoken_sha256 = {quote(sha256_hex(credentials.admin_token))}\n",
        "[egress]\nallow_loopback = true  # the demo agents listen on 127.0.0.1\n",
        f"[registry]\ncards_dir = {quote(str(cards_dir))}\n",
        f"[policy]\npolicy_file = {quote(str(find_policy_file()))}\n",
    ]
    lines += [
        f"[agents.{quote(name)}]\ncredential_sha256 = {quote(sha256_hex(secret))}\n"
        for name, secret in credentials.credentials.items()
    ]
    return "\n".join(lines)


def write_state(
    state: Path, host: str, port: int, cards_dir: Path, credentials: DemoCredentials
) -> Path:
    """Write the broker's config and ``credentials.json`` into ``state``; return the config."""
    (state / "logs").mkdir(mode=0o700, parents=True, exist_ok=True)
    config = state / CONFIG_FILE
    config.write_text(config_toml(host, port, cards_dir, credentials), encoding="utf-8")
    write_credentials(state / CREDENTIALS_FILE, credentials)
    return config


def write_credentials(path: Path, credentials: DemoCredentials) -> None:
    """Write ``credentials.json`` readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # the file may have existed with a wider mode
    with os.fdopen(fd, "wb") as out:
        out.write(msgspec.json.format(msgspec.json.encode(credentials)))


# --- children ---------------------------------------------------------------------------------


def _start_all(
    children: list[Child], state: Path, config: Path, cards_dir: Path, creds: DemoCredentials
) -> None:
    planner_env = {BROKER_URL_ENV: creds.broker_url, CREDENTIAL_ENV: creds.credentials["planner"]}
    for name in ("researcher", "writer", "planner"):
        port = card_port(load_card(name, cards_dir=cards_dir))
        command = ["-m", "broker.demo.agents", name, "--port", str(port)]
        command += ["--cards-dir", str(cards_dir)]
        env = planner_env if name == "planner" else {}
        children.append(_start(name, command, state, env))
        _wait_ready(children[-1], f"http://{HOST}:{port}/.well-known/agent-card.json")
    broker_child = _start("broker", ["-m", "broker", "serve", "--config", str(config)], state, {})
    children.append(broker_child)
    _wait_ready(broker_child, f"{creds.broker_url}/healthz", BROKER_START_TIMEOUT_S)


def _start(name: str, args: list[str], state: Path, extra_env: dict[str, str]) -> Child:
    log = state / "logs" / f"{name}.log"
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_child_env(extra_env),
            start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
        )
    return Child(name, process, log)


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra, "PYTHONUNBUFFERED": "1"}
    # A source checkout need not be installed: let the children import `broker` (and the agent
    # kit beside it) as we do.
    source_root = Path(broker.__file__).resolve().parents[1]
    paths = (str(source_root), str(source_root / "agent_kit"), env.get("PYTHONPATH"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def _wait_ready(child: Child, url: str, timeout_s: float = AGENT_START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check_alive(child)
        with suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(POLL_INTERVAL_S)
    raise ChildFailedError(
        f"{child.name} did not answer {url} in {timeout_s:.0f} s" + _last_words(child)
    )


def check_alive(child: Child) -> None:
    """Raises ChildFailedError, with what the child said last, if it has exited."""
    code = child.process.poll()
    if code is not None:
        raise ChildFailedError(f"{child.name} exited with status {code}" + _last_words(child))


def _last_words(child: Child) -> str:
    """``: <what the child said last>`` and where its log is, on one line."""
    lines = child.log.read_text(encoding="utf-8", errors="replace").splitlines()
    said = next((_message(line) for line in reversed(lines) if _is_problem(line)), "")
    return (f": {said}" if said else "") + f" (log: {child.log})"


def _is_problem(line: str) -> bool:
    """A line in which a child explains why it stops: the CLI's one line, or an error log line."""
    return line.startswith("a2a-broker: ") or '"level":"error"' in line


def _message(line: str) -> str:
    if line.startswith("{"):
        try:
            message = str(msgspec.json.decode(line).get("message", line))
        except (msgspec.DecodeError, AttributeError):
            message = line
    else:
        message = line.removeprefix("a2a-broker: ")
    return " ".join(message.split())[:300]


def _watch(children: list[Child]) -> NoReturn:
    while True:
        for child in children:
            check_alive(child)
        time.sleep(POLL_INTERVAL_S * 2)


def _stop_all(children: list[Child]) -> None:
    """Terminate the children, newest first; kill any still running after STOP_TIMEOUT_S."""
    for child in reversed(children):
        if child.process.poll() is None:
            child.process.terminate()
    for child in reversed(children):
        try:
            child.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt, as Ctrl-C does."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """Within the block (cleanup), Ctrl-C and SIGTERM do nothing."""
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
