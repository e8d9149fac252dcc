"""The broker's Redis as a new user points it at one: each topology, TLS, ACL, and a full Redis.

Real servers throughout: the session's standalone server, three-master cluster and Sentinel set
(``tests/conftest.py``), and private servers where a test changes a server's configuration
(ACL users, TLS, maxmemory). What a user sees is what is checked: a broker that starts and
serves, or one line that says why it will not, with no secret in it.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.budgets.model import Limit, Scope, Usage
from broker.errors import (
    StoreFullError,
    StoreMayEvictError,
    StoreTopologyError,
    StoreUnavailableError,
)
from broker.settings import (
    REDIS_PASSWORD_ENV,
    REDIS_USERNAME_ENV,
    SettingsError,
    StoreSettings,
    load_settings,
)
from broker.stores.base import AgentRecord, TaskRoute
from broker.stores.budget_base import Reservation
from broker.stores.factory import open_backend
from broker.stores.redis_batch import BatchingRedis, BatchingRedisCluster, _LinkBatcher
from broker.stores.redis_client import REDIS_FAILURES, open_redis
from broker.stores.replica_channel import ReplicaChannel
from testkit.config import BrokerConfig
from testkit.redis_process import (
    REDIS_MODES,
    RedisMode,
    free_port,
    start_node,
    start_redis_cluster,
    stop_redis_server,
)

MakeSettings = Callable[[RedisMode], StoreSettings]
SECRET = "s3cret-Pa55word"


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[Callable[..., int]]:
    """``start(*arguments, **client_kwargs)``: a redis-server of this test's own; its port."""
    started = []

    def start(*arguments: str, **client_kwargs: Any) -> int:
        port = free_port()
        started.append(start_node(port, tmp_path, list(arguments), **client_kwargs))
        return port

    yield start
    for process in started:
        stop_redis_server(process)


async def _serves(settings: StoreSettings) -> None:
    """Start checks pass, and a write and a read through the stores work."""
    backend = open_backend(settings)
    try:
        await backend.start_checks()
        record = AgentRecord(name="alpha", card_json="{}")
        assert await backend.stores().registry.create(record) is True
        assert await backend.stores().registry.get("alpha") == record
    finally:
        await backend.close()


@pytest.mark.parametrize("param", REDIS_MODES)
async def test_each_topology_starts_and_serves(
    param: str, redis_store_settings: MakeSettings
) -> None:
    await _serves(redis_store_settings(REDIS_MODES[param]))


@pytest.mark.parametrize(
    ("server", "mode", "says"),
    [
        ("cluster", "standalone", 'redis_mode = "standalone", but 127.0.0.1:'),
        ("standalone", "cluster", 'redis_mode = "cluster", but 127.0.0.1:'),
        ("standalone", "sentinel", 'redis_mode = "sentinel", but 127.0.0.1:'),
        ("sentinel", "standalone", 'redis_mode = "standalone", but 127.0.0.1:'),
    ],
)
async def test_a_mode_the_server_does_not_run_refuses_start_in_one_line(
    server: RedisMode, mode: RedisMode, says: str, redis_store_settings: MakeSettings
) -> None:
    real = redis_store_settings(server)
    first = real.redis_url.split(",")[0]
    wrong = StoreSettings(backend="redis", redis_mode=mode, redis_url=first,
                          key_prefix=real.key_prefix)  # fmt: skip
    backend = open_backend(wrong)
    try:
        with pytest.raises(StoreTopologyError) as refused:
            await backend.start_checks()
    finally:
        await backend.close()
    message = str(refused.value)
    assert says in message
    assert "\n" not in message
    names = {"standalone": "a standalone server", "cluster": "a Redis Cluster node",
             "sentinel": "a Sentinel"}  # fmt: skip
    assert f"is {names[server]}: set redis_mode = \"{server}\"" in message


async def test_an_unknown_sentinel_service_refuses_start(
    redis_store_settings: MakeSettings,
) -> None:
    real = redis_store_settings("sentinel")
    wrong = StoreSettings(backend="redis", redis_mode="sentinel", redis_url=real.redis_url,
                          sentinel_service="nobody")  # fmt: skip
    backend = open_backend(wrong)
    try:
        with pytest.raises(StoreTopologyError, match='sentinel_service = "nobody"'):
            await backend.start_checks()
    finally:
        await backend.close()


async def test_closing_a_sentinel_store_closes_its_connections_to_the_sentinels(
    redis_store_settings: MakeSettings,
) -> None:
    """The client asks the sentinels where the primary is; closing the store hangs up on them
    as well as on the primary (redis-py closes only the primary's pool by itself)."""
    settings = redis_store_settings("sentinel")
    host, port = settings.redis_url.split(",")[0].removeprefix("redis://").split(":")
    sentinel = redis.asyncio.Redis(host=host, port=int(port))

    async def client_ids() -> set[str]:
        listed = (await sentinel.execute_command("CLIENT", "LIST")).decode()
        return {part[3:] for part in listed.split() if part.startswith("id=")}

    try:
        before = await client_ids()
        backend = open_backend(settings)
        closed = False
        try:
            await backend.ping()  # finds the primary through the sentinel
            ours = await client_ids() - before
            assert ours, "the store asked the sentinel nothing"
            await backend.close()
            closed = True

            async def hung_up() -> bool:
                return not ours & await client_ids()

            await _eventually_async(hung_up, within_s=5.0)
        finally:
            if not closed:
                await backend.close()
    finally:
        await sentinel.aclose()


async def test_an_unreachable_store_starts_and_refuses_requests(unused_tcp_port: int) -> None:
    settings = StoreSettings(backend="redis", redis_mode="cluster",
                             redis_url=f"redis://127.0.0.1:{unused_tcp_port}")  # fmt: skip
    backend = open_backend(settings)
    try:
        await backend.start_checks()  # no error: requests fail closed until Redis answers
        with pytest.raises(StoreUnavailableError):
            await backend.stores().registry.get("alpha")
    finally:
        await backend.close()


async def test_a_server_that_may_evict_keys_refuses_start_unless_allowed(
    private_server: Callable[..., int],
) -> None:
    port = private_server("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    settings = StoreSettings(backend="redis", redis_url=f"redis://127.0.0.1:{port}/0")
    backend = open_backend(settings)
    try:
        with pytest.raises(StoreMayEvictError, match="maxmemory-policy allkeys-lru"):
            await backend.start_checks()
    finally:
        await backend.close()
    await _serves(StoreSettings(backend="redis", redis_url=settings.redis_url,
                                allow_eviction=True))  # fmt: skip


async def test_a_full_redis_refuses_with_store_full(private_server: Callable[..., int]) -> None:
    port = private_server("--maxmemory", "1mb", "--maxmemory-policy", "noeviction")
    settings = StoreSettings(backend="redis", redis_url=f"redis://127.0.0.1:{port}/0")
    backend = open_backend(settings)
    big = "x" * 100_000
    try:
        await backend.start_checks()  # noeviction: fine to start
        with pytest.raises(StoreFullError) as full:
            for n in range(100):
                await backend.stores().registry.put(AgentRecord(name=f"a{n}", card_json=big))
        assert full.value.reason == "STORE_FULL"
        assert full.value.retryable
    finally:
        await backend.close()


def _acl_server(private_server: Callable[..., int]) -> int:
    return private_server(
        "--user", "default", "off",
        "--user", "broker", "on", f">{SECRET}", "~*", "&*", "+@all",
        username="broker", password=SECRET,
    )  # fmt: skip


async def test_acl_credentials_come_from_the_environment(
    private_server: Callable[..., int], tmp_path: Path
) -> None:
    port = _acl_server(private_server)
    config = BrokerConfig(port=free_port()).use_redis(
        f"redis://127.0.0.1:{port}/0", key_prefix="a2ab"
    ).write(tmp_path / "broker.toml")
    env = {REDIS_USERNAME_ENV: "broker", REDIS_PASSWORD_ENV: SECRET}
    settings = load_settings(str(config), environ=env)
    assert SECRET not in repr(settings)
    await _serves(settings.store)


async def test_a_wrong_password_is_refused_without_showing_it(
    private_server: Callable[..., int], tmp_path: Path
) -> None:
    port = _acl_server(private_server)
    config = BrokerConfig(port=free_port()).use_redis(
        f"redis://127.0.0.1:{port}/0", key_prefix="a2ab"
    ).write(tmp_path / "broker.toml")
    wrong = "not-" + SECRET
    settings = load_settings(str(config), environ={REDIS_USERNAME_ENV: "broker",
                                                   REDIS_PASSWORD_ENV: wrong})  # fmt: skip
    backend = open_backend(settings.store)
    try:
        with pytest.raises(StoreUnavailableError) as refused:
            await backend.stores().registry.get("alpha")
    finally:
        await backend.close()
    shown = f"{refused.value} {refused.value.detail}"
    assert wrong not in shown
    assert SECRET not in shown


def test_credentials_in_the_file_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(f'[store.credentials]\npassword = "{SECRET}"\n')
    with pytest.raises(SettingsError, match="environment only") as refused:
        load_settings(str(config), environ={})
    assert SECRET not in str(refused.value)


# --- TLS ------------------------------------------------------------------------------------


def _key_and_cert(
    name: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None, *, ca: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    signer_key, issuer_name = (key, subject) if issuer is None else (issuer[0], issuer[1].subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return key, builder.sign(signer_key, hashes.SHA256())


def _write_pem(folder: Path, name: str, key: ec.EllipticCurvePrivateKey,
               cert: x509.Certificate) -> tuple[str, str]:  # fmt: skip
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(key_path), str(cert_path)


async def test_rediss_with_a_ca_and_a_client_certificate(
    private_server: Callable[..., int], tmp_path: Path
) -> None:
    ca = _key_and_cert("test-ca", None, ca=True)
    _, ca_file = _write_pem(tmp_path, "ca", *ca)
    server_key, server_cert = _write_pem(tmp_path, "server", *_key_and_cert("redis", ca, ca=False))
    client_key, client_cert = _write_pem(tmp_path, "client", *_key_and_cert("a2ab", ca, ca=False))
    port = free_port()
    tls_port = private_server(
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", server_cert,
        "--tls-key-file", server_key, "--tls-ca-cert-file", ca_file, "--tls-auth-clients", "yes",
        ping_port=port, ssl=True, ssl_ca_certs=ca_file, ssl_certfile=client_cert,
        ssl_keyfile=client_key,
    )  # fmt: skip
    assert tls_port != port  # the helper's own free port goes unused; the TLS port serves
    url = f"rediss://127.0.0.1:{port}/0"
    await _serves(StoreSettings(backend="redis", redis_url=url, tls_ca_file=ca_file,
                                tls_cert_file=client_cert, tls_key_file=client_key))  # fmt: skip
    # Without the client certificate the server refuses the connection: no request is served.
    backend = open_backend(StoreSettings(backend="redis", redis_url=url, tls_ca_file=ca_file))
    try:
        with pytest.raises(StoreUnavailableError):
            await backend.stores().registry.get("alpha")
    finally:
        await backend.close()
    assert redis.__version__  # the client library in use speaks TLS itself (no stunnel)


async def test_over_rediss_script_batches_take_over_the_tls_connection(
    private_server: Callable[..., int], tmp_path: Path
) -> None:
    """The batcher's link (``redis_link``) takes over redis-py's TLS transport after the
    handshake, on asyncio's loop and on uvloop's (production's)."""
    ca = _key_and_cert("test-ca", None, ca=True)
    _, ca_file = _write_pem(tmp_path, "ca", *ca)
    server_key, server_cert = _write_pem(tmp_path, "server", *_key_and_cert("redis", ca, ca=False))
    port = free_port()
    private_server(
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", server_cert,
        "--tls-key-file", server_key, "--tls-ca-cert-file", ca_file, "--tls-auth-clients", "no",
        ping_port=port, ssl=True, ssl_ca_certs=ca_file,
    )  # fmt: skip
    settings = StoreSettings(
        backend="redis", redis_url=f"rediss://127.0.0.1:{port}/0", tls_ca_file=ca_file
    )

    async def scenario() -> list[Any]:
        client = open_redis(settings, redis_class=BatchingRedis, cluster_class=BatchingRedisCluster)
        assert isinstance(client, BatchingRedis) and isinstance(client.batcher, _LinkBatcher)
        echo = client.register_script("return ARGV[1]")
        try:
            together = await asyncio.gather(*(echo(args=[n]) for n in range(3)))
            return [*together, await echo(args=["alone"])]
        finally:
            await client.aclose()

    expected = [b"0", b"1", b"2", b"alone"]
    assert await scenario() == expected
    assert await asyncio.to_thread(uvloop.run, scenario()) == expected


# --- replica_acks: WAIT on the writes the broker acts on ------------------------------------


async def test_with_replica_acks_writes_held_by_a_replica_are_served(
    redis_store_settings: MakeSettings,
) -> None:
    settings = msgspec.structs.replace(redis_store_settings("sentinel"), replica_acks=1)
    backend = open_backend(settings)
    try:
        route = TaskRoute(agent="alpha", task_id="t1", owner="caller")
        assert await backend.stores().task_routes.claim(route, 60, "tree-1") is True
        assert await backend.stores().task_trees.members("tree-1") == [("alpha", "t1")]
    finally:
        await backend.close()


async def test_with_more_replica_acks_than_replicas_every_write_fails_closed(
    redis_store_settings: MakeSettings,
) -> None:
    # The session's Sentinel set has one replica: two cannot confirm.
    settings = msgspec.structs.replace(
        redis_store_settings("sentinel"), replica_acks=2, replica_ack_timeout_ms=50
    )
    backend = open_backend(settings)
    try:
        route = TaskRoute(agent="alpha", task_id="t1", owner="caller")
        with pytest.raises(StoreUnavailableError) as refused:
            await backend.stores().task_routes.claim(route, 60)
        assert "1 of 2 replicas" in (refused.value.detail or "")
    finally:
        await backend.close()


async def test_on_a_cluster_replica_acks_wait_on_every_node_a_batch_wrote_to(
    tmp_path: Path,
) -> None:
    """Three masters with a replica each: batches whose scripts go to several nodes (a route
    and its tree entry; budgets over eight shards) are served once every node's replica holds
    them, and each node written to got its own WAIT; asking for two replicas fails closed."""
    cluster = await asyncio.to_thread(start_redis_cluster, tmp_path / "cluster", 3, 1)
    settings = StoreSettings(backend="redis", redis_mode="cluster", redis_url=cluster.url,
                             replica_acks=1, budget_shards=8)  # fmt: skip
    masters = [redis.Redis.from_url(url) for url in cluster.url.split(",")]
    route = TaskRoute(agent="alpha", task_id="t1", owner="caller")
    try:
        for master in masters:
            master.config_resetstat()
        backend = open_backend(settings)
        try:
            stores = backend.stores()
            assert await stores.task_routes.claim(route, 60, "tree-1") is True
            assert await stores.task_trees.members("tree-1") == [("alpha", "t1")]
            scopes = [Scope("agent", f"a{n}", (Limit("calls", "day", 5),)) for n in range(6)]
            held = await stores.budgets.reserve(scopes, Usage(calls=1), ttl_s=60)
            assert isinstance(held, Reservation)
            await stores.budgets.settle(held, Usage(calls=1))
        finally:
            await backend.close()
        # Every node that holds what was written got a WAIT (two or three nodes).
        written = [master for master in masters if master.dbsize()]
        assert len(written) >= 2
        assert all(_calls(master, "wait") >= 1 for master in written)

        two = msgspec.structs.replace(settings, replica_acks=2, replica_ack_timeout_ms=50)
        backend = open_backend(two)
        try:
            with pytest.raises(StoreUnavailableError) as refused:
                await backend.stores().task_routes.claim(route, 60, "tree-1")
            assert "1 of 2 replicas" in (refused.value.detail or "")
        finally:
            await backend.close()
    finally:
        for master in masters:
            master.close()
        cluster.stop()


def _calls(node: redis.Redis, command: str) -> int:
    stats = node.info("commandstats").get(f"cmdstat_{command}", {"calls": 0})
    return int(stats["calls"])


# --- the replica channel on a cluster whose node dies ----------------------------------------


async def test_a_channel_on_a_cluster_moves_to_another_node_when_its_node_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = await asyncio.to_thread(start_redis_cluster, tmp_path / "cluster", 3, 1)
    settings = StoreSettings(backend="redis", redis_mode="cluster", redis_url=cluster.url)
    listener, publisher = open_redis(settings), open_redis(settings)
    received: list[bytes] = []
    gaps: list[float] = []
    doomed = int(cluster.url.split(",")[0].rsplit(":", 1)[1])
    picks: list[int] = []

    def pick(nodes: list[Any]) -> Any:
        """The first subscription goes to the node that will die; later ones elsewhere."""
        wanted = [n for n in nodes if (n.port == doomed) == (not picks)]
        picks.append(wanted[0].port)
        return wanted[0]

    monkeypatch.setattr("broker.stores.replica_channel.pick_node", pick)
    channel = ReplicaChannel(listener, "ch", received.append, retry_s=0.2,
                             on_gap=lambda: gaps.append(time.monotonic()))  # fmt: skip
    try:
        await channel.start()
        assert await channel.publish(b"before")
        await _eventually(lambda: received == [b"before"])
        await asyncio.to_thread(cluster.kill, doomed)
        await _eventually(lambda: bool(gaps), within_s=15)  # resubscribed elsewhere

        async def delivered_after() -> bool:
            await publisher.publish("ch", b"after")
            return b"after" in received

        await _eventually_async(delivered_after, within_s=15)
        assert picks[0] == doomed and doomed not in picks[1:]
    finally:
        await channel.stop()
        await listener.aclose()
        await publisher.aclose()
        cluster.stop()


async def _eventually(check: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.05)


async def _eventually_async(check: Callable[[], Awaitable[bool]], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            if await check():
                return
        except REDIS_FAILURES:
            pass  # the cluster client is still learning the new topology
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.2)
