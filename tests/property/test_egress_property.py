"""The egress policy against an independent classification built from ``ipaddress`` attributes."""

from __future__ import annotations

import ipaddress
from itertools import product

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import EgressDeniedError
from broker.outbound.egress import EgressPolicy
from broker.settings import EgressSettings

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA = {
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
}
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SETTINGS = [
    EgressSettings(allow_loopback=lo, allow_private=pr)
    for lo, pr in product([False, True], repeat=2)
]


def reference_allows(ip: IP, settings: EgressSettings) -> bool:
    """What the issue asks for, written from the stdlib's own flags rather than address tables."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    elif ip in NAT64:  # 64:ff9b::a.b.c.d is routed to a.b.c.d by a NAT64 gateway
        ip = ipaddress.IPv4Address(ip.packed[-4:])
    if ip in METADATA or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return False
    if ip.version == 4 and ip.packed[0] == 0:  # "this network", 0.0.0.0/8
        return False
    if ip.is_loopback:
        return settings.allow_loopback
    if ip.is_reserved:  # IPv4 240/4 and broadcast; IPv6 space outside the assigned blocks
        return False
    if (ip.version == 6 and ip.is_site_local) or not ip.is_global:
        return settings.allow_private
    return True


def _ipv4_mapped(v4: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(0xFFFF_0000_0000 | int(v4))


def _in(cidr: str) -> st.SearchStrategy[IP]:
    return st.ip_addresses(network=cidr)


always_refused = st.one_of(
    _in("169.254.0.0/16"),
    _in("fe80::/10"),
    _in("0.0.0.0/8"),
    st.sampled_from([*sorted(METADATA, key=str), ipaddress.ip_address("::")]),
    _in("169.254.0.0/16").map(_ipv4_mapped),
    _in("0.0.0.0/8").map(_ipv4_mapped),
)
any_address = st.one_of(
    st.ip_addresses(),
    always_refused,
    _in("127.0.0.0/8"),
    _in("10.0.0.0/8"),
    _in("100.64.0.0/10"),
    _in("fc00::/7"),
    _in("192.0.0.0/24"),
    _in("64:ff9b::/96"),
    st.ip_addresses(v=4).map(_ipv4_mapped),
)


def _verdict(policy: EgressPolicy, ip: IP) -> EgressDeniedError | None:
    """check_ip's outcome; any exception other than EgressDeniedError fails the test."""
    try:
        policy.check_ip(ip)
    except EgressDeniedError as refused:
        return refused
    return None


@pytest.mark.parametrize("settings", SETTINGS)
@given(ip=any_address)
def test_check_ip_agrees_with_the_reference(settings: EgressSettings, ip: IP) -> None:
    refused = _verdict(EgressPolicy(settings), ip)
    assert (refused is None) == reference_allows(ip, settings)
    if refused is not None:
        assert str(ip) not in refused.message  # the class is named, the address is not


@given(ip=always_refused)
def test_link_local_metadata_and_unspecified_are_refused_whatever_the_settings(ip: IP) -> None:
    policy = EgressPolicy(EgressSettings(allow_loopback=True, allow_private=True))
    refused = _verdict(policy, ip)
    assert refused is not None
    assert any(k in refused.message for k in ("link-local", "cloud metadata", "unspecified"))


@pytest.mark.parametrize("settings", SETTINGS)
@given(ip=any_address)
def test_check_url_judges_an_ip_literal_as_check_ip_does(settings: EgressSettings, ip: IP) -> None:
    policy = EgressPolicy(settings)
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    try:
        policy.check_url(f"http://{host}:8080/a2a")
    except EgressDeniedError:
        allowed = False
    else:
        allowed = True
    assert allowed == reference_allows(ip, settings)


@given(ip=st.ip_addresses(v=4))
def test_ipv4_written_as_one_number_is_never_let_through(ip: ipaddress.IPv4Address) -> None:
    policy = EgressPolicy(EgressSettings(allow_loopback=True, allow_private=True))
    with pytest.raises(EgressDeniedError):
        policy.check_url(f"http://{int(ip)}/")
