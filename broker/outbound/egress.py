"""The egress (SSRF) rules every outbound connection of the broker's transport obeys.

Three checks, each closing a gap the one before leaves open:

1. ``EgressPolicy.check_url`` runs on every URL before anything is sent: scheme, no userinfo, and
   numeric hosts, because aiohttp never calls the resolver for an IP literal.
2. ``EgressResolver`` drops every resolved address the policy refuses, so a name pointing at a
   metadata service or at loopback never reaches connect().
3. ``EgressPolicy.guarded_socket`` is the connector's socket factory: it sees the exact address
   handed to connect() for every new connection, whatever path produced it, before a packet leaves.

The transports apply them: ``broker.outbound.http11`` (its ``pool.Connector`` resolves and
filters itself, then connects through the guard) and ``broker.outbound.client`` (aiohttp, with
``EgressResolver`` and the guard as its socket factory). A refusal raised inside a connect path
travels as ``EgressRefusedOSError`` and becomes the EgressDeniedError again in the one error
table, ``broker.outbound.errors.transport_error``.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from broker.errors import (
    EgressDeniedError,
)
from broker.settings import EgressSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _nets(*cidrs: str) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


# Refused whatever the settings say; the first match names the class. Metadata comes first because
# two of those addresses lie in ranges that allow_private opens (100.64.0.0/10 and fc00::/7).
_ALWAYS_REFUSED: tuple[tuple[str, tuple[_Network, ...]], ...] = (
    (
        "cloud metadata",
        _nets("169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32", "192.0.0.192/32"),
    ),
    ("link-local", _nets("169.254.0.0/16", "fe80::/10")),
    # All of 0/8, not only 0.0.0.0: Linux delivers a connect() to 0.0.0.0 to the local host.
    ("unspecified", _nets("0.0.0.0/8", "::/128")),
    ("multicast", _nets("224.0.0.0/4", "ff00::/8")),
    ("reserved", _nets("240.0.0.0/4")),  # includes the broadcast address 255.255.255.255
)
_LOOPBACK = _nets("127.0.0.0/8", "::1/128")
_PRIVATE = _nets(
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fec0::/10"
)
# IPv6 outside these blocks is unassigned or deprecated (IPv4-compatible ::/96, SIIT): refused.
_IPV6_ASSIGNED = _nets("2000::/3", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_CONFIGURABLE = frozenset({"loopback", "private"})


def _within(ip: IPAddress, nets: tuple[_Network, ...]) -> bool:
    return any(ip in net for net in nets)  # an address of the other IP version is never "in"


def _reached_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address actually reaches (mapped or NAT64), else ``ip`` itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


@functools.lru_cache(maxsize=4096)
def address_class(ip: IPAddress) -> str:
    """Name the class of ``ip``: an always-refused class, "loopback", "private" or "public".

    Special-purpose ranges that are not globally routable (documentation, benchmarking, ...) count
    as "private"; the stdlib's ``is_global`` tracks the IANA registry for those.
    """
    ip = _reached_ipv4(ip)
    for name, nets in _ALWAYS_REFUSED:
        if _within(ip, nets):
            return name
    if _within(ip, _LOOPBACK):
        return "loopback"
    if ip.version == 6 and not _within(ip, _IPV6_ASSIGNED):
        return "reserved"
    if _within(ip, _PRIVATE) or not ip.is_global:
        return "private"
    return "public"


@functools.lru_cache(maxsize=4096)  # parsing costs ~6 us, failing on a name ~9 us; hosts repeat
def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _numeric_host(host: str) -> tuple[IPAddress | None, bool]:
    """The address a numeric host denotes and whether it is plainly written; (None, True) if a name.

    Not plain: forms libc still reads as numbers (2130706433, 127.1, 0x7f.1, a final dot).
    """
    bare = host.rstrip(".") or host
    if (ip := _parse_ip(bare)) is not None:
        return ip, bare == host
    try:
        return ipaddress.IPv4Address(socket.inet_aton(bare)), False
    except OSError:
        return None, True


def is_numeric_host(host: str) -> bool:
    """Whether ``host`` is an IP address (in any spelling libc reads as one), not a name."""
    return _numeric_host(host)[0] is not None


def _denied(message: str, detail: str | None = None) -> EgressDeniedError:
    return EgressDeniedError(f"Egress refused: {message}", detail=detail)


class EgressPolicy:
    """Which destinations the broker may connect to, from ``EgressSettings``.

    Link-local, cloud metadata, unspecified, multicast and reserved addresses are always refused;
    loopback only with ``allow_loopback``, private ranges only with ``allow_private``.
    """

    def __init__(self, settings: EgressSettings) -> None:
        allowed = {"public"}
        allowed |= {"loopback"} if settings.allow_loopback else set()
        allowed |= {"private"} if settings.allow_private else set()
        self._allowed = frozenset(allowed)
        self._schemes = frozenset(s.lower() for s in settings.allowed_schemes)

    def refusal(self, ip: IPAddress) -> EgressDeniedError | None:
        """The error refusing ``ip``, or None when the broker may connect to it."""
        kind = address_class(ip)
        if kind in self._allowed:
            return None
        article = "an" if kind[0] in "aeiou" else "a"
        if kind in _CONFIGURABLE:
            setting = f"[egress] allow_{kind}"
            return EgressDeniedError(
                f"Egress refused: the destination is {article} {kind} address, which"
                f" {setting} = false forbids (set it to true to allow {kind} agents).",
                detail=f"address {ip}",
                metadata={"setting": setting},
            )
        return _denied(
            f"the destination is {article} {kind} address, which the broker never connects to"
            " (no setting allows it).",
            f"address {ip}",
        )

    def check_ip(self, ip: IPAddress) -> None:
        """Return if the broker may connect to ``ip``; raise EgressDeniedError naming its class."""
        if (error := self.refusal(ip)) is not None:
            raise error

    def check_url(self, url: str | URL) -> URL:
        """Refuse a URL the broker must not send to; return it parsed, to be sent exactly so.

        Raises EgressDeniedError for a scheme not in ``allowed_schemes``, a missing host, userinfo,
        an IP-literal host the policy refuses, or a numeric host in a non-canonical form.
        """
        try:
            parsed = url if isinstance(url, URL) else URL(url)
        except (TypeError, ValueError):
            raise _denied("the URL is not a valid absolute URL.") from None
        if parsed.scheme not in self._schemes:
            allowed = ", ".join(sorted(self._schemes))
            raise _denied(f"the URL scheme {parsed.scheme!r} is not allowed (allowed: {allowed}).")
        if not parsed.host:
            raise _denied("the URL has no host.")
        if parsed.user is not None or parsed.password is not None:
            raise _denied("URLs carrying a user name or password are not allowed.")
        self._check_numeric_host(parsed.host)
        return parsed

    def _check_numeric_host(self, host: str) -> None:
        # A name is left to the resolver and the socket guard; numbers never reach the resolver.
        ip, plain = _numeric_host(host)
        if ip is not None:
            self.check_ip(ip)
            if not plain:
                raise _denied("numeric hosts must be written in plain dotted form.", f"host {host}")

    def address_refusal(self, address: str) -> EgressDeniedError | None:
        """Like ``refusal`` for a numeric address as resolvers return it; refuses non-addresses."""
        ip = _parse_ip(address)
        return _denied("the destination address is not valid.") if ip is None else self.refusal(ip)

    def guarded_socket(self, addr_info: aiohttp.AddrInfoType) -> socket.socket:
        """Socket factory for the connector: no socket for an address the policy refuses.

        Runs for every new connection with the exact address connect() will use, so it also
        covers IP-literal hosts and any path around the resolver. Raises an OSError (aiohttp only
        carries those) that ``transport_error`` turns back into the EgressDeniedError.
        """
        family, type_, proto, _, address = addr_info
        if (error := self.address_refusal(str(address[0]))) is not None:
            raise EgressRefusedOSError(error)
        return socket.socket(family=family, type=type_, proto=proto)


class EgressRefusedOSError(OSError):
    """Carries an EgressDeniedError through aiohttp's connect path, which passes on OSErrors."""

    def __init__(self, refusal: EgressDeniedError) -> None:
        # Constant text: aiohappyeyeballs re-raises this very object when all attempts say the same.
        super().__init__(errno.EACCES, "egress refused")
        self.refusal = refusal


class EgressResolver(AbstractResolver):
    """aiohttp's default resolver, keeping only the addresses the policy allows.

    When every address is refused it raises an OSError that ``transport_error`` turns into the
    EgressDeniedError for the first of them.
    """

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        refusals = [self._policy.address_refusal(r["host"]) for r in results]
        allowed = [r for r, refusal in zip(results, refusals, strict=True) if refusal is None]
        if allowed:
            return allowed
        if not refusals:  # an empty list would trip an assertion inside aiohttp
            raise socket.gaierror(socket.EAI_NONAME, "no address")
        raise EgressRefusedOSError(refusals[0] or _denied("the host has no address."))

    async def close(self) -> None:
        await self._inner.close()


async def check_registered_url(policy: EgressPolicy, url: str, *, timeout_s: float = 2.0) -> None:
    """Refuse, at registration, an agent or card URL the broker would refuse to call.

    Numeric hosts in any spelling are judged as they stand; a name is resolved and refused if
    any of its addresses is. A name that does not resolve (yet) is accepted: every call is
    checked again when it connects. Raises EgressDeniedError naming the setting that forbids it.
    """
    parsed = policy.check_url(url)
    host = parsed.host or ""
    if _numeric_host(host)[0] is not None:
        return
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            infos = await loop.getaddrinfo(host, parsed.port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        return
    for *_, sockaddr in infos:
        if (error := policy.address_refusal(str(sockaddr[0]))) is not None:
            raise error


async def check_push_url(policy: EgressPolicy, url: str, *, timeout_s: float = 5.0) -> None:
    """Refuse a push-notification URL unless every address its host resolves to is allowed.

    The agent, not the broker, will connect to it, so this checks the name's addresses now; it
    cannot stop a later DNS change. Raises EgressDeniedError, also when the name does not resolve.
    """
    parsed = policy.check_url(url)
    host = parsed.host or ""
    if _numeric_host(host)[0] is not None:
        return  # check_url has judged the literal
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            infos = await loop.getaddrinfo(host, parsed.port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        raise _denied("the URL's host name does not resolve, so it cannot be checked.") from None
    for *_, sockaddr in infos:
        if (error := policy.address_refusal(str(sockaddr[0]))) is not None:
            raise error


class PushUrlEgress:
    """``check_push_url`` under one egress policy: what a push-notification URL must pass."""

    def __init__(self, policy: EgressPolicy) -> None:
        self._policy = policy

    async def __call__(self, url: str) -> None:
        await check_push_url(self._policy, url)
