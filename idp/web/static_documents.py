"""Discovery and JWKS answered before routing (pure ASGI): they are the most requested
documents, the same bytes for everyone, and need no request parsing (routes.py notes
them in its URL map)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from idp.oidc.signing_keys import JWKS_MAX_AGE_SECONDS
from idp.web.services import Services

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/jwks"
_DISCOVERY_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"public, max-age=300"),
    (b"access-control-allow-origin", b"*"),
]
# application/json rather than jwk-set+json: older RP libraries warn on the latter
_JWKS_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", f"public, max-age={JWKS_MAX_AGE_SECONDS}".encode()),
    (b"access-control-allow-origin", b"*"),
]


class StaticDocumentsMiddleware:
    def __init__(self, app: ASGIApp, *, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in (DISCOVERY_PATH, JWKS_PATH):
            if scope["method"] not in ("GET", "HEAD"):
                await _method_not_allowed(send)
                return
            path = scope["path"]
            if path == DISCOVERY_PATH:
                await _send(send, scope, _DISCOVERY_HEADERS, self.services.discovery.current())
                return
            if path == JWKS_PATH:
                # in memory; the app's background refresher reloads it after a rotation
                await _send(send, scope, _JWKS_HEADERS, self.services.oidc.keys.get().jwks_bytes)
                return
        await self.app(scope, receive, send)


async def _send(send: Send, scope: Scope, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    length = (b"content-length", str(len(body)).encode())
    await send({"type": "http.response.start", "status": 200, "headers": [*headers, length]})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


async def _method_not_allowed(send: Send) -> None:
    body = b"Method Not Allowed"
    headers = [
        (b"allow", b"GET, HEAD"),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 405, "headers": headers})
    await send({"type": "http.response.body", "body": body})
