"""A minimal HTTP/1.1 keep-alive client on asyncio streams, and a browser-like cookie jar, for
the flow driver. It costs a fraction of httpx's CPU per request (see bench/README.md), so
the load generator is not what limits the numbers. It only ever connects to 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from urllib.parse import urlencode

MAX_BODY_BYTES = 1 << 20  # a benchmark response is a page or a JSON document


class HTTPFailure(Exception):
    """An exchange that a flow did not expect; the message names the step and the status."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]  # names lower-cased, in order
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


class Connection:
    """One keep-alive connection to 127.0.0.1:port, reopened when the server closes it."""

    def __init__(self, port: int, host_header: str) -> None:
        self._port, self._host = port, host_header
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, target: str, *, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Response:
        reused = self._writer is not None and not self._closed()
        if not reused:
            await self._open()
        try:
            return await self._exchange(self._encode(method, target, headers or {}, body))
        except asyncio.IncompleteReadError as exc:
            self.close()
            if not (reused and not exc.partial):
                raise
        # the server closed an idle keep-alive connection before reading this request: resend once
        await self._open()
        return await self._exchange(self._encode(method, target, headers or {}, body))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    def _closed(self) -> bool:
        return self._reader is None or self._reader.at_eof() or self._writer is None or self._writer.is_closing()

    async def _open(self) -> None:
        self.close()
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)

    def _encode(self, method: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def _exchange(self, request: bytes) -> Response:
        assert self._reader is not None and self._writer is not None
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = tuple(
            (name.strip().lower(), value.strip())
            for name, value in (line.split(":", 1) for line in lines[1:] if ":" in line)
        )
        response = Response(status, headers, await self._read_body(status, headers))
        if (response.header("connection") or "").lower() == "close":
            self.close()
        return response

    async def _read_body(self, status: int, headers: tuple[tuple[str, str], ...]) -> bytes:
        assert self._reader is not None
        fields = dict(headers)
        if status in (204, 304) or status < 200:
            return b""
        if "content-length" in fields:
            return await self._reader.readexactly(min(int(fields["content-length"]), MAX_BODY_BYTES))
        if fields.get("transfer-encoding", "").lower() == "chunked":
            return await self._read_chunks()
        body = await self._reader.read(MAX_BODY_BYTES)
        self.close()
        return body

    async def _read_chunks(self) -> bytes:
        assert self._reader is not None
        parts: list[bytes] = []
        for _ in range(10_000):
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await self._reader.readexactly(size + 2))
            if size == 0:
                return b"".join(parts)
        raise HTTPFailure("chunked body with too many chunks")


class CookieJar:
    """One browser's cookies for one host (path and expiry attributes are not needed here:
    every cookie is sent back; a cookie the server empties or expires is dropped)."""

    def __init__(self, cookies: dict[str, str] | None = None) -> None:
        self.cookies = dict(cookies or {})

    def update(self, response: Response) -> None:
        for line in response.header_values("set-cookie"):
            pair, _, attributes = line.partition(";")
            name, _, value = pair.strip().partition("=")
            lowered = attributes.lower()
            if not value or "max-age=0" in lowered or "1970" in lowered:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value

    def header(self) -> dict[str, str]:
        if not self.cookies:
            return {}
        return {"Cookie": "; ".join(f"{name}={value}" for name, value in self.cookies.items())}


def form_body(fields: dict[str, str]) -> bytes:
    return urlencode(fields).encode()


def basic_authorization(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
