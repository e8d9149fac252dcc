"""A mesh for the delegation tests: two broker processes on one Redis, and the hopper agents.

``start_mesh`` writes everything the brokers need and starts the three processes at once:

* a credential per identity (hopper agents and caller-only ones such as ``alice``), declared as
  ``[agents.NAME] credential_sha256``; the hopper agents' cards in a ``cards_dir``;
* one signing key (``python -m broker keys generate``) for both brokers, so a token minted by
  one verifies on the other, and one public URL (as replicas behind a load balancer have): the
  token issuer is that URL;
* a copy of the policy per broker (``policy-0.csv``, ``policy-1.csv``), so a test can edit one;
* ``[store] backend = "redis"`` with a key prefix of the mesh's own.

The helpers below are what the tests do on the wire: originate a plan at an agent, present a
token as some agent, read what an agent saw.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from google.protobuf.json_format import MessageToDict

from .harness import ServerProcess, free_port
from .hopper import CREDENTIALS_ENV, hopper_card
from .wire import jsonrpc, user_message

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Mesh:
    brokers: tuple[str, str]
    hopper: str  # base URL of the hopper process
    credentials: dict[str, str]
    admin_headers: dict[str, str]
    policy_files: tuple[Path, Path]
    key_file: Path
    issuer: str  # the brokers' shared public URL
    logs: Path

    def bearer(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credentials[name]}"}

    def jsonrpc_url(self, target: str, via: int = 0) -> str:
        return f"{self.brokers[via]}/agents/{target}/jsonrpc"


def _broker_config(
    port: int, issuer: str, redis_url: str, prefix: str, files: dict[str, Path], *, store: str = ""
) -> str:
    return f"""
[server]
port = {port}
public_url = "{issuer}"

[store]
backend = "redis"
redis_url = "{redis_url}"
key_prefix = "{prefix}"
{store}
[keys]
signing_key_file = "{files["key"]}"

[registry]
cards_dir = "{files["cards"]}"

[egress]
allow_loopback = true

[policy]
policy_file = "{files["policy"]}"
reload_interval_s = 0.2
"""


def _identities(credentials: dict[str, str]) -> str:
    return "".join(
        f'\n[agents.{name}]\ncredential_sha256 = "{hashlib.sha256(cred.encode()).hexdigest()}"\n'
        for name, cred in credentials.items()
    )


@contextmanager
def start_mesh(
    folder: Path,
    redis_url: str,
    *,
    agents: list[str],
    callers: list[str],
    policy: str,
    delegation: str = "",
    store: str = "",
) -> Iterator[Mesh]:
    """Start two brokers and the hopper (hosting ``agents``); ``delegation`` is extra TOML,
    ``store`` extra lines of the ``[store]`` table."""
    credentials = {name: secrets.token_urlsafe(24) for name in [*agents, *callers]}
    ports = [free_port(), free_port()]
    hopper_port = free_port()
    brokers = (f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}")
    hopper_url = f"http://127.0.0.1:{hopper_port}"
    key_file = folder / "broker-key.pem"
    subprocess.run(
        [sys.executable, "-m", "broker", "keys", "generate", str(key_file)],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
    )
    cards = folder / "cards"
    cards.mkdir()
    for name in agents:
        card = MessageToDict(hopper_card(name, hopper_url))
        (cards / f"{name}.json").write_text(json.dumps(card))
    admin = secrets.token_urlsafe(16)
    prefix = f"e2e-{uuid.uuid4().hex[:12]}"
    policy_files = (folder / "policy-0.csv", folder / "policy-1.csv")
    argvs: list[tuple[str, list[str], dict[str, str]]] = []
    for i, port in enumerate(ports):
        policy_files[i].write_text(policy)
        files = {"key": key_file, "cards": cards, "policy": policy_files[i]}
        config = folder / f"broker-{i}.toml"
        text = _broker_config(port, brokers[0], redis_url, prefix, files, store=store)
        config.write_text(text + _identities(credentials) + delegation)
        argv = [sys.executable, "-m", "broker", "serve", "--config", str(config)]
        argvs.append((f"broker-{i}", argv, {"A2A_BROKER_ADMIN_TOKEN": admin}))
    hopper_argv = [
        sys.executable, "-m", "tests.e2e.hopper", "--port", str(hopper_port),
        "--names", ",".join(agents), "--broker-urls", ",".join(brokers),
        "--jwks-url", f"{brokers[0]}/.well-known/jwks.json", "--issuer", brokers[0],
    ]  # fmt: skip
    hopper_env = {CREDENTIALS_ENV: json.dumps({n: credentials[n] for n in agents})}
    argvs.append(("hopper", hopper_argv, hopper_env))
    procs = [
        ServerProcess.launch(argv, env=env, cwd=REPO_ROOT, log_dir=folder, name=name)
        for name, argv, env in argvs
    ]
    try:
        for proc, url in zip(procs, [*brokers, hopper_url], strict=True):
            ready = f"{url}/_ready" if url == hopper_url else f"{url}/readyz"
            proc.wait_ready(ready, timeout=START_TIMEOUT_S)
        yield Mesh(
            brokers=brokers,
            hopper=hopper_url,
            credentials=credentials,
            admin_headers={"Authorization": f"Bearer {admin}"},
            policy_files=policy_files,
            key_file=key_file,
            issuer=brokers[0],
            logs=folder,
        )
    finally:
        for proc in procs:
            proc.stop()


# --- what the tests do on the wire --------------------------------------------------------------


def plan(marker: str, *route: str, **options: Any) -> str:
    """The message text telling the first agent where to go next (see ``hopper.Plan``)."""
    return json.dumps({"marker": marker, "next": list(route), **options})


def new_marker(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


async def originate(
    http: httpx.AsyncClient, mesh: Mesh, caller: str, target: str, text: str, *, via: int = 0
) -> httpx.Response:
    """``caller`` sends ``text`` to ``target`` through broker ``via``, with no delegation."""
    return await jsonrpc(
        http,
        mesh.jsonrpc_url(target, via),
        "SendMessage",
        {"message": user_message(text)},
        headers=mesh.bearer(caller),
    )


async def hop_reply(
    http: httpx.AsyncClient, mesh: Mesh, caller: str, target: str, text: str, *, via: int = 0
) -> dict[str, Any]:
    """Originate at ``target`` and return its artifact: ``{"agent", "claims", "results"}``."""
    response = await originate(http, mesh, caller, target, text, via=via)
    task = response.json()["result"]["task"]
    assert task["status"]["state"] == "TASK_STATE_COMPLETED", task
    return dict(json.loads(task["artifacts"][0]["parts"][0]["text"]))


async def present(
    http: httpx.AsyncClient,
    mesh: Mesh,
    presenter: str,
    target: str,
    text: str,
    *,
    token: str,
    via: int = 0,
) -> httpx.Response:
    """``presenter`` calls ``target`` through broker ``via``, presenting delegation ``token``."""
    return await jsonrpc(
        http,
        mesh.jsonrpc_url(target, via),
        "SendMessage",
        {"message": user_message(text)},
        headers={**mesh.bearer(presenter), "A2A-Delegation": token},
    )


async def seen(
    http: httpx.AsyncClient, mesh: Mesh, agent: str, marker: str
) -> list[dict[str, Any]]:
    """What hopper agent ``agent`` recorded for requests carrying ``marker``."""
    response = await http.get(f"{mesh.hopper}/_seen", params={"name": agent})
    return [record for record in response.json() if record["marker"] == marker]


async def token_for(
    http: httpx.AsyncClient, mesh: Mesh, origin: str, agent: str, marker: str
) -> str:
    """A genuine token minted for ``agent`` on a one-hop chain ``origin`` starts."""
    await hop_reply(http, mesh, origin, agent, plan(marker))
    (record,) = await seen(http, mesh, agent, marker)
    return str(record["token"])


def refusal(result: dict[str, Any]) -> tuple[int | None, str | None]:
    """(code, reason) of a downstream call an agent reported as refused."""
    assert not result["ok"], result
    return result["code"], result["reason"]


def reasons(results: list[dict[str, Any]]) -> list[str]:
    """Each result's reason, "ok" for a call that went through."""
    return sorted("ok" if r["ok"] else str(r["reason"]) for r in results)
