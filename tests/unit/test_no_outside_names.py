"""The suite's DNS guard (tests/conftest.py): no test asks a DNS server for an outside name."""

from __future__ import annotations

import asyncio
import socket

import pytest

from testkit.dns import local_only_getaddrinfo


@pytest.mark.parametrize("name", ["weather.example.org", "example.com.", b"legacy.example.org"])
def test_an_outside_name_is_unknown_at_once(name: str | bytes) -> None:
    with pytest.raises(socket.gaierror) as caught:
        socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)
    assert caught.value.errno == socket.EAI_NONAME


async def test_the_loops_resolver_sees_the_same() -> None:
    with pytest.raises(socket.gaierror):
        await asyncio.get_running_loop().getaddrinfo("weather.example.org", 80)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2852039166", "169.254.169.254"),  # inet_aton's spellings are addresses, not names
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("::1", "::1"),
    ],
)
def test_addresses_resolve_as_they_are(host: str, address: str) -> None:
    infos = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)
    assert {info[4][0] for info in infos} == {address}


def test_loopback_names_reach_the_real_resolver() -> None:
    asked: list[object] = []

    def real(host: object, *_: object, **__: object) -> list[object]:
        asked.append(host)
        return []

    guarded = local_only_getaddrinfo(real)
    guarded("localhost", 80)
    guarded("LOCALHOST.", 80)
    with pytest.raises(socket.gaierror):
        guarded("localhost.example.org", 80)
    assert asked == ["localhost", "LOCALHOST."]
