"""The HTTP side of idp/security/outbound.py, on httpcore: connections only to the
addresses the policy allows, one deadline per request, a capped body. Imported by the first
outbound call, not at start (httpcore and the CA store are resident only in a process that
calls out)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

import httpcore

from idp.security.outbound import Outbound, OutboundError, OutboundRefused, Reply


def get(outbound: Outbound, url: str) -> Reply:
    deadline = time.monotonic() + outbound.total_seconds
    backend = _CheckedBackend(outbound, deadline)
    headers = [(b"Accept", b"application/json"), (b"User-Agent", b"idp")]
    with _translated(), httpcore.ConnectionPool(ssl_context=outbound.tls, network_backend=backend) as pool:
        with pool.stream("GET", url, headers=headers, extensions=_timeouts(outbound.total_seconds)) as response:
            body = _capped(response.iter_stream(), _length(response.headers), outbound.max_body_bytes)
        return Reply(response.status, body)


async def post_form(outbound: Outbound, url: str, form: dict[str, str]) -> Reply:
    content = urlencode(form).encode()
    headers = [
        (b"Content-Type", b"application/x-www-form-urlencoded"),
        (b"Cache-Control", b"no-store"),
        (b"User-Agent", b"idp"),
    ]
    backend = _AsyncCheckedBackend(outbound)
    with _translated():
        async with asyncio.timeout(outbound.total_seconds):
            async with httpcore.AsyncConnectionPool(ssl_context=outbound.tls, network_backend=backend) as pool:
                extensions = _timeouts(outbound.total_seconds)
                async with pool.stream("POST", url, headers=headers, content=content, extensions=extensions) as r:
                    body = await _acapped(r.aiter_stream(), _length(r.headers), outbound.max_body_bytes)
                return Reply(r.status, body)


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
