"""Trusted reverse proxies: which address a connection or a request really comes from.

Behind nginx every connection's peer is nginx; the client's address is in the headers nginx adds.
Anyone can send those headers, so they are believed only when the peer itself is a trusted proxy
(`[server] trusted_proxies`, a list of CIDRs); from any other peer they are ignored and the peer
is the client. The rule for a trusted peer:

- `X-Forwarded-For` (every such header, in order, read as one list): walk it from the right,
  skipping addresses of trusted proxies; the first address that is not trusted is the client.
  Whatever stands left of it was written by the client or by proxies nobody vouches for, and is
  never believed: a client sending `X-Forwarded-For: 192.0.2.1` through nginx arrives as
  `192.0.2.1, <its real address>`, and its real address is what counts. When every entry is a
  trusted proxy, the left-most one is the client. An entry that is not an IP address ends the
  walk, and the client is the last hop that could be believed (the entry right of it, or the
  peer).
- without `X-Forwarded-For`: `X-Real-IP`, one address.
- neither header (a proxy's own request, a probe on the box), or a header that names no usable
  address: the peer.

An address comes back without a port (proxies do not forward the client's), IPv4-mapped IPv6
addresses as plain IPv4, so one client is one key of the per-IP limits whichever way it came.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

__all__ = ["TrustedProxies", "forwarded_remote", "parse_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> IPAddress | None:
    """An address as proxies write it (`192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
    `[2001:db8::1]:4711`, quoted or not), IPv4-mapped IPv6 as IPv4; None if it is none."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text, bracket, _port = text[1:].partition("]")
        if not bracket:
            return None
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The networks whose forwarding headers are believed; empty (the default) believes none."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(n) for n in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in network for network in self.networks)

    def client_of(self, peer: str, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The client a trusted `peer` names in its forwarding headers (header names in any
        case); None when the peer is not trusted or names no usable address."""
        if not self.networks or not self.trusts(parse_address(peer)):
            return None
        forwarded_for: list[str] = []
        real_ip = None
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"x-forwarded-for":
                forwarded_for.extend(value.decode("latin-1").split(","))
            elif lowered == b"x-real-ip":
                real_ip = value.decode("latin-1")
        if forwarded_for:
            return self._right_most_untrusted(forwarded_for)
        address = parse_address(real_ip) if real_ip is not None else None
        return str(address) if address is not None else None

    def _right_most_untrusted(self, entries: list[str]) -> str | None:
        believed: IPAddress | None = None  # the last hop a trusted proxy vouched for
        for entry in reversed(entries):
            address = parse_address(entry)
            if address is None:
                break
            believed = address
            if not self.trusts(address):
                break
        return str(believed) if believed is not None else None


def forwarded_remote(
    remote: Any, headers: Iterable[tuple[bytes, bytes]], proxies: TrustedProxies
) -> Any:
    """A handshake's `remote` (the transport's `Endpoint`, or a string): the client's address
    (a string, no port) when the peer is a trusted proxy naming one, else `remote` unchanged."""
    address = getattr(remote, "address", None)
    if address is None or not proxies:
        return remote
    client = proxies.client_of(str(address), headers)
    return remote if client is None else client
