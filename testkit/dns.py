"""A resolver for tests: addresses and loopback names resolve, every other name is unknown.

No test asks a DNS server anything (tests/conftest.py installs it for the whole session).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


def _numeric(host: str) -> bool:
    """Does the resolver read ``host`` as an address (any spelling ``inet_aton`` takes, or
    IPv6), so that no DNS server is asked?"""
    try:
        socket.inet_aton(host)
    except OSError:
        try:
            socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
        except OSError:
            return False
    return True


def local_only_getaddrinfo(
    real: Callable[..., list[Any]],
) -> Callable[..., list[Any]]:
    """``socket.getaddrinfo`` that resolves addresses and loopback names with ``real`` and
    answers any other name as unknown (``EAI_NONAME``) without asking a DNS server."""

    def getaddrinfo(host: str | bytes | None, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else host
        if name is None or _numeric(name) or name.lower().rstrip(".") in LOOPBACK_NAMES:
            return real(host, port, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, f"tests resolve no outside name ({name})")

    return getaddrinfo
