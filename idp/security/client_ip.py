"""The client's IP address: X-Forwarded-For is believed only when the direct peer is a
trusted proxy (predecessor fix F-03), and then only up to the first untrusted hop."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HOPS = 20  # more proxies than any deployment chains; bounds the work a long header causes


def parse_networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def joined_forwarded_for(lines: list[str]) -> str | None:
    """Several X-Forwarded-For lines are one list, in order (RFC 9110 §5.3). Reading only
    the first would let a client's own line stand in front of what a proxy appended in a
    line of its own (HAProxy's `option forwardfor` does), and be taken for the client."""
    return ", ".join(lines) if lines else None


def client_ip(peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str | None:
    if peer is None or not trusted or not forwarded_for or not is_trusted(peer, trusted):
        return peer
    # The nearest hops only (the list's right end: what our proxies appended). Keeping the
    # first ones instead would let a client push the real address out of the window by
    # sending twenty entries of its own, and then choose its recorded address.
    hops = [h.strip() for h in forwarded_for.split(",")[-MAX_HOPS:] if h.strip()]
    # Walk from the nearest hop outwards; the first address we do not trust is the client.
    for hop in reversed(hops):
        if not is_trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage in the header: fall back to what we saw
    return hops[0] if hops else peer
