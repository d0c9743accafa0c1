"""Tiny real HTTP servers on loopback for tests of idp's outbound calls: one that answers,
one that accepts and never answers (a stalling jwks_uri), one whose body never ends, one that
drips a byte at a time. Each counts the connections it accepted and keeps the requests' heads."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

Behaviour = Callable[["LoopbackServer", socket.socket], None]


@dataclass
class LoopbackServer:
    host: str
    port: int = 0
    behaviour: Behaviour | None = None
    connections: int = 0
    heads: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    closed_early: threading.Event = field(default_factory=threading.Event)  # the client hung up mid-body
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/jwks", *, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def read_head(self, conn: socket.socket) -> str:
        data = b""
        conn.settimeout(5)
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        with self.lock:
            self.heads.append(head)
        return head

    def send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        with self.lock:
            self.bytes_sent += len(data)


def answering(
    status: int = 200, body: bytes | dict[str, Any] = b"", headers: dict[str, str] | None = None
) -> Behaviour:
    payload = json.dumps(body).encode() if isinstance(body, dict) else body

    def behave(server: LoopbackServer, conn: socket.socket) -> None:
        server.read_head(conn)
        lines = [f"HTTP/1.1 {status} X", f"content-length: {len(payload)}", "connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        server.send(conn, ("\r\n".join(lines) + "\r\n\r\n").encode() + payload)

    return behave


def stalling(server: LoopbackServer, conn: socket.socket) -> None:
    """Accepts, reads the request, never answers (until the test ends)."""
    server.read_head(conn)
    server.stop.wait(30)


def endless(server: LoopbackServer, conn: socket.socket) -> None:
    """A 200 whose body never ends (no length, 16 KiB at a time, a little pause between)."""
    server.read_head(conn)
    try:
        server.send(conn, b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n")
        server.send(conn, b'{"keys": [')
        while not server.stop.is_set():
            server.send(conn, b" " * 16384)
            time.sleep(0.002)
    except OSError:
        server.closed_early.set()


def dripping(server: LoopbackServer, conn: socket.socket) -> None:
    """A 200 that sends its body one byte every 0.2 s, for ever."""
    server.read_head(conn)
    try:
        server.send(conn, b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        while not server.stop.is_set():
            server.send(conn, b" ")
            time.sleep(0.2)
    except OSError:
        server.closed_early.set()


@contextmanager
def loopback_server(behaviour: Behaviour, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[LoopbackServer]:
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(64)
    listener.settimeout(0.1)
    server = LoopbackServer(host=host, port=listener.getsockname()[1], behaviour=behaviour)

    def handle(conn: socket.socket) -> None:
        with conn:
            try:
                behaviour(server, conn)
            except OSError:
                pass

    def accept_loop() -> None:
        while not server.stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with server.lock:
                server.connections += 1
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        thread.join(5)
        listener.close()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
