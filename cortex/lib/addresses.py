"""The outbound address policy: which IP addresses a request on a tenant's behalf may reach, in every spelling.

Refused: loopback, private (RFC 1918, ``fc00::/7``), link-local, site-local, shared address space (CGNAT,
``100.64.0.0/10``), cloud metadata, multicast, unspecified, reserved and every other non-global address — also
when an IPv6 address embeds such an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``,
6to4 ``2002::/16``, NAT64 ``64:ff9b::/96`` and ``64:ff9b:1::/48``).

A host written as an address is read in every spelling the C library's ``inet_aton`` accepts (``127.1``,
``2130706433``, ``0x7f000001``, ``0177.0.0.1``) as well as the dotted and IPv6 forms (:func:`literal_ip`), so a
stored URL can be refused when it is saved (:func:`refused_literal`); a host name is checked on the addresses it
resolves to, when the connection is made (``cortex.integrations.outbound``).

The policy is switched off for development and tests by ``CORTEX_OUTBOUND_ALLOW_PRIVATE=true``
(:func:`set_allow_private`, applied by the app factory and the CLI from the settings).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible addresses (::a.b.c.d)
_INET_ATON = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)(?:\.(?:0[xX][0-9a-fA-F]*|[0-9]+)){0,3}")

_allow_private = False

#: What a refused stored URL is told (after the reason).
NOT_CALLED = ("Cortex does not call loopback, private, link-local, shared, multicast or cloud-metadata addresses "
              "(CORTEX_OUTBOUND_ALLOW_PRIVATE=true allows them, for development)")


def set_allow_private(allowed: bool) -> None:
    """Switch the policy off (``True``: development and tests) or on (the default)."""
    global _allow_private
    _allow_private = bool(allowed)


def allow_private() -> bool:
    """Whether the policy is switched off in this process."""
    return _allow_private


def literal_ip(host: str) -> IPAddress | None:
    """The address a host names when it is written as one (any spelling, brackets and zone ids allowed); None
    for a host name."""
    text = host.strip().strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if _INET_ATON.fullmatch(text):  # 127.1, 2130706433, 0x7f.0.0.1, 0177.0.0.1 …
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def _kind(addr: IPAddress) -> str | None:
    """What ``addr`` is when it is no public destination (None for a public one); embedded IPv4 not looked at."""
    if addr in _METADATA:
        return "the cloud metadata address"
    if addr.is_unspecified:
        return "an unspecified address"
    if addr.is_loopback:
        return "a loopback address"
    if addr.is_link_local:
        return "a link-local address"
    if addr.version == 6 and addr.is_site_local:  # fec0::/10: deprecated, still routed inside some networks
        return "a site-local address"
    if addr.is_multicast:
        return "a multicast address"
    if addr.version == 4 and addr in _SHARED:
        return "a shared address space (100.64.0.0/10) address"
    if addr.is_reserved:
        return "a reserved address"
    if addr.is_private:
        return "a private address"
    if not addr.is_global:
        return "not a publicly routable address"
    return None


def embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, IPv4-compatible, 6to4 or NAT64 IPv6 address, else None."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if any(addr in network for network in _NAT64) or (addr in _COMPATIBLE and int(addr) > 1):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def address_kind(addr: IPAddress) -> str | None:
    """Why the policy refuses ``addr`` ("a loopback address", "the cloud metadata address" …), None when it is a
    public destination. An IPv6 address that embeds an IPv4 address is judged by the IPv4 address."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr in _METADATA:
            return "the cloud metadata address"
        inner = embedded_ipv4(addr)
        if inner is not None:
            return _kind(inner)
    return _kind(addr)


def forbidden_reason(ip: str) -> str | None:
    """None if ``ip`` (any spelling) is a public address, else why not, naming it (``"127.0.0.1 is a loopback
    address"``) — for messages about an address the caller wrote, never about one a name resolved to."""
    addr = literal_ip(ip)
    if addr is None:
        return f"{ip} is not an IP address"
    kind = address_kind(addr)
    if kind is None:
        return None
    text = ip.strip().strip("[]")
    shown = f"{text} ({addr})" if addr.version == 4 and text != str(addr) else text  # 127.1 (127.0.0.1)
    if isinstance(addr, ipaddress.IPv6Address) and embedded_ipv4(addr) is not None and addr not in _METADATA:
        return f"{shown} embeds {embedded_ipv4(addr)}, which is {kind}"
    return f"{shown} is {kind}"


def refused_literal(url: str) -> str | None:
    """Why a URL whose host is written as an address the policy refuses may not be stored (its host, any
    spelling), or None: a host name, a public address, the policy switched off, or no usable URL (the caller's
    own URL checks answer that)."""
    if _allow_private:
        return None
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return None
    if not host:
        return None
    reason = forbidden_reason(host) if literal_ip(host) is not None else None
    return reason
