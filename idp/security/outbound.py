"""Outbound HTTP (client key sets, back-channel logout) to IDP_OUTBOUND_ALLOWED_NETWORKS only.

The host is resolved here and the address checked is the address connected to (httpcore's
network-backend seam), so a DNS answer that changes between check and connect (rebinding)
cannot redirect a request; TLS and the Host header still name the URL's host. No proxy or
.netrc from the environment, no redirects, one total deadline, a capped body."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpcore

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
    ssl_context: ssl.SSLContext = field(default_factory=ssl.create_default_context)

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
        deadline = time.monotonic() + self.total_seconds
        backend = _CheckedBackend(self, deadline)
        headers = [(b"Accept", b"application/json"), (b"User-Agent", b"idp")]
        with _translated(), httpcore.ConnectionPool(ssl_context=self.ssl_context, network_backend=backend) as pool:
            with pool.stream("GET", url, headers=headers, extensions=_timeouts(self.total_seconds)) as response:
                body = _capped(response.iter_stream(), _length(response.headers), self.max_body_bytes)
            return Reply(response.status, body)

    async def post_form(self, url: str, form: dict[str, str]) -> Reply:
        content = urlencode(form).encode()
        headers = [
            (b"Content-Type", b"application/x-www-form-urlencoded"),
            (b"Cache-Control", b"no-store"),
            (b"User-Agent", b"idp"),
        ]
        backend = _AsyncCheckedBackend(self)
        with _translated():
            async with asyncio.timeout(self.total_seconds):
                async with httpcore.AsyncConnectionPool(ssl_context=self.ssl_context, network_backend=backend) as pool:
                    extensions = _timeouts(self.total_seconds)
                    async with pool.stream("POST", url, headers=headers, content=content, extensions=extensions) as r:
                        body = await _acapped(r.aiter_stream(), _length(r.headers), self.max_body_bytes)
                    return Reply(r.status, body)

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


def _timeouts(seconds: float) -> dict[str, Any]:
    return {"timeout": {"connect": seconds, "read": seconds, "write": seconds, "pool": seconds}}


def _length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    value = next((v for k, v in headers if k.lower() == b"content-length"), None)
    return int(value) if value is not None and value.strip().isdigit() else None


def _capped(chunks: Iterator[bytes], length: int | None, cap: int) -> bytes:
    if length is not None and length > cap:
        raise OutboundRefused(f"body larger than {cap} bytes")
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > cap:  # stop reading: the connection is closed, not drained
            raise OutboundRefused(f"body larger than {cap} bytes")
    return bytes(body)


async def _acapped(chunks: AsyncIterator[bytes], length: int | None, cap: int) -> bytes:
    if length is not None and length > cap:
        raise OutboundRefused(f"body larger than {cap} bytes")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > cap:
            raise OutboundRefused(f"body larger than {cap} bytes")
    return bytes(body)


@contextmanager
def _translated() -> Iterator[None]:
    """httpcore's exceptions (and the total deadline) become OutboundError, named by type."""
    try:
        yield
    except TimeoutError:
        raise OutboundError("timed out") from None
    except httpcore.UnsupportedProtocol:
        raise OutboundError("only http and https URLs") from None
    except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
        raise OutboundError(type(exc).__name__) from None


class _CheckedBackend(httpcore.NetworkBackend):
    """Connects only to an allowed address of the host, and every socket operation of the
    request ends by its one deadline."""

    def __init__(self, outbound: Outbound, deadline: float) -> None:
        self.outbound, self.deadline = outbound, deadline
        self.inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        last: Exception = OutboundError("no address")
        for address in self.outbound.allowed_addresses(host, port):
            try:
                stream = self.inner.connect_tcp(address, port, _within(self.deadline, timeout), local_address)
                return _DeadlineStream(stream, self.deadline)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise OutboundRefused("no unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self.inner, self.deadline = inner, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, _within(self.deadline, timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _within(self.deadline, timeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self.inner.start_tls(ssl_context, server_hostname, _within(self.deadline, timeout))
        return _DeadlineStream(tls, self.deadline)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


def _within(deadline: float, timeout: float | None) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("deadline passed")
    return left if timeout is None else min(left, timeout)


class _AsyncCheckedBackend(httpcore.AsyncNetworkBackend):
    """As _CheckedBackend; the deadline is the caller's asyncio.timeout."""

    def __init__(self, outbound: Outbound) -> None:
        self.outbound = outbound
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        allowed = await loop.run_in_executor(None, self.outbound.allowed_addresses, host, port)
        last: Exception = OutboundError("no address")
        for address in allowed:
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise OutboundRefused("no unix sockets")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
