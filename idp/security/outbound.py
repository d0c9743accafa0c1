"""Outbound HTTP (client key sets, back-channel logout) to IDP_OUTBOUND_ALLOWED_NETWORKS only.

The host is resolved here and the address checked is the address connected to (httpcore's
network-backend seam), so a DNS answer that changes between check and connect (rebinding)
cannot redirect a request; TLS and the Host header still name the URL's host. No proxy or
.netrc from the environment, no redirects, one total deadline, a capped body."""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from idp.security.client_ip import Network, parse_networks

RFC1918_AND_ULA = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
LOOPBACK = ("127.0.0.0/8", "::1/128")
TOTAL_SECONDS = 3.0  # one request, from name lookup to the last byte
MAX_BODY_BYTES = 64 * 1024
# This host, loopback, link-local (169.254.169.254 is the cloud metadata service) and
# multicast/reserved: allowed only by a listed network inside them, never by 0.0.0.0/0.
_GUARDED = parse_networks(
    ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3", "::/128", "::1/128", "fe80::/10", "ff00::/8")
)

Resolver = Callable[[str, int], Sequence[str]]


class OutboundError(Exception):
    """A request that did not get an answer; `detail` is a fixed text for logs and audit."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class OutboundRefused(OutboundError):
    """Refused by policy (an address outside the allowed networks, an oversize body)."""


def resolve_host(host: str, port: int) -> list[str]:
    """The system resolver's addresses for host, in its order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise OutboundError("name does not resolve") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class OutboundPolicy:
    networks: tuple[Network, ...]

    @classmethod
    def of(cls, cidrs: Iterable[str], *, loopback: bool = False) -> OutboundPolicy:
        """`loopback`: add 127.0.0.0/8 and ::1 (an issuer on localhost talks to local RPs)."""
        return cls(parse_networks((*cidrs, *(LOOPBACK if loopback else ()))))

    def allows(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        guard = next((g for g in _GUARDED if g.version == ip.version and ip in g), None)
        return any(
            ip in net and (guard is None or net.subnet_of(guard))  # type: ignore[arg-type]
            for net in self.networks
            if net.version == ip.version
        )


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


@dataclass(frozen=True)
class Outbound:
    """The one way idp calls out. `resolve` is the seam tests replace (rebinding)."""

    policy: OutboundPolicy
    resolve: Resolver = resolve_host
    total_seconds: float = TOTAL_SECONDS
    max_body_bytes: int = MAX_BODY_BYTES
    ssl_context: ssl.SSLContext | None = None  # None: the system's CA store, loaded at the first call

    def find_refusal(self, url: str) -> str | None:
        """Why a request to url would be refused now (for `idp clients sync`), or None."""
        parts = urlsplit(url)
        try:
            addresses = self._addresses(parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443))
        except OutboundError as exc:
            return exc.detail
        outside = [a for a in addresses if not self.policy.allows(a)]
        return f"resolves to {', '.join(outside)}, outside the allowed networks" if outside else None

    def get(self, url: str) -> Reply:
        from idp.security.outbound_transport import get

        return get(self, url)

    async def post_form(self, url: str, form: dict[str, str]) -> Reply:
        from idp.security.outbound_transport import post_form

        return await post_form(self, url, form)

    @property
    def tls(self) -> ssl.SSLContext:
        return self.ssl_context if self.ssl_context is not None else _default_tls()

    def allowed_addresses(self, host: str, port: int) -> list[str]:
        """The addresses a connection may go to: those the lookup gave that the policy allows."""
        addresses = self._addresses(host, port)
        allowed = [a for a in addresses if self.policy.allows(a)]
        if not allowed:
            raise OutboundRefused("address outside IDP_OUTBOUND_ALLOWED_NETWORKS")
        return allowed

    def _addresses(self, host: str, port: int) -> list[str]:
        if not host:
            raise OutboundError("no host")
        try:
            return [str(ipaddress.ip_address(host))]  # a literal address: nothing to look up
        except ValueError:
            return list(self.resolve(host, port))


@functools.cache
def _default_tls() -> ssl.SSLContext:
    return ssl.create_default_context()
