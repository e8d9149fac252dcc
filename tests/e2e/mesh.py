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

import json
import secrets
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from google.protobuf.json_format import MessageToDict

from testkit.brokers import generate_signing_key, launch_broker
from testkit.config import BrokerConfig
from testkit.procs import all_stopped, free_port, launch_service, local_url

from .hopper import CREDENTIALS_ENV, hopper_card
from .wire import jsonrpc, user_message

START_TIMEOUT_S = 60.0  # three processes importing at once on a loaded machine


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
    port: int, issuer: str, redis_url: str, prefix: str, files: dict[str, Path]
) -> BrokerConfig:
    config = BrokerConfig(port=port).set("server", public_url=issuer)
    config.use_redis(redis_url, key_prefix=prefix)
    config.set("keys", signing_key_file=files["key"]).set("registry", cards_dir=files["cards"])
    return config.use_policy_file(files["policy"], reload_interval_s=0.2)


@contextmanager
def start_mesh(
    folder: Path,
    redis_url: str,
    *,
    agents: list[str],
    callers: list[str],
    policy: str,
    tables: Mapping[str, Mapping[str, Any]] | None = None,
    broker_env: Mapping[str, str] | None = None,
) -> Iterator[Mesh]:
    """Start two brokers and the hopper (hosting ``agents``); ``tables`` are set on both
    brokers' configs (``{"delegation.limits": {"max_depth": 3}}``), ``broker_env`` is added to
    both brokers' environment."""
    credentials = {name: secrets.token_urlsafe(24) for name in [*agents, *callers]}
    ports = [free_port(), free_port()]
    hopper_port = free_port()
    brokers = (local_url(ports[0]), local_url(ports[1]))
    key_file = generate_signing_key(folder / "broker-key.pem")
    cards = folder / "cards"
    cards.mkdir()
    for name in agents:
        card = MessageToDict(hopper_card(name, local_url(hopper_port)))
        (cards / f"{name}.json").write_text(json.dumps(card))
    admin = secrets.token_urlsafe(16)
    prefix = f"e2e-{uuid.uuid4().hex[:12]}"
    policy_files = (folder / "policy-0.csv", folder / "policy-1.csv")
    configs = []
    for i, port in enumerate(ports):
        policy_files[i].write_text(policy)
        files = {"key": key_file, "cards": cards, "policy": policy_files[i]}
        config = _broker_config(port, brokers[0], redis_url, prefix, files)
        for table, values in (tables or {}).items():
            config.set(table, **values)
        configs.append(config.identities(credentials))
    with all_stopped([]) as children:
        started = []
        for i, config in enumerate(configs):
            started.append(
                launch_broker(
                    config, log_dir=folder, name=f"broker-{i}", admin_token=admin, env=broker_env
                )
            )
            children.append(started[-1])
        hopper = launch_service(
            "tests.e2e.hopper",
            *("--names", ",".join(agents), "--broker-urls", ",".join(brokers)),
            *("--jwks-url", f"{brokers[0]}/.well-known/jwks.json", "--issuer", brokers[0]),
            name="hopper",
            log_dir=folder,
            port=hopper_port,
            env={CREDENTIALS_ENV: json.dumps({n: credentials[n] for n in agents})},
        )
        children.append(hopper)
        for broker in started:
            broker.wait_ready("/readyz", timeout=START_TIMEOUT_S)
        hopper.wait_ready(timeout=START_TIMEOUT_S)
        yield Mesh(
            brokers=brokers,
            hopper=hopper.url,
            credentials=credentials,
            admin_headers={"Authorization": f"Bearer {admin}"},
            policy_files=policy_files,
            key_file=key_file,
            issuer=brokers[0],
            logs=folder,
        )


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
