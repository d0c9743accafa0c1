"""Floors for the client_credentials request: the same uvicorn (uvloop + httptools) and
Starlette that idp runs, doing less than idp does. The report sets idp's rate beside each,
so that the part of the gap to the peer that no Python server under our constraints could
close is measured, not guessed. FLOOR_MODE picks one:

- `stack` (the default): a token-shaped POST with no database, no client lookup, no crypto.
  No idp request can be faster than this on one core.
- `durable`: what any server that answers for its tokens must do, written as directly as
  Python allows: the Basic credentials checked against a keyed digest in constant time, a
  token minted, its digest and an audit row inserted with the stdlib sqlite3 driver (WAL,
  synchronous=NORMAL, idp's settings) and committed before the answer, one JSON audit line.
  No ORM, no OAuth library, no rate limit, no request log, no metrics.
- `grouped`: `durable` with one COMMIT per turn of the event loop for every request handled
  in it (group commit), each answer sent after its commit.
- `read`: GET /userinfo with the bearer token `floor-token`: its keyed digest looked up with
  its user in one stdlib sqlite3 SELECT, expiry checked, the claims answered as JSON.
  Measured by hand (docs in the README), beside the userinfo row of the same run.
- `authlib`: `durable` with Authlib's AuthorizationServer and its ClientCredentialsGrant
  deciding the request (the issue's constraint: Authlib stays the authorization server), the
  same raw inserts in save_token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import os
import secrets
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, OAuth2Payload, OAuth2Request, grants
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_DISCOVERY = json.dumps(
    {
        "issuer": "http://localhost",
        "authorization_endpoint": "http://localhost/authorize",
        "token_endpoint": "http://localhost/token",
        "userinfo_endpoint": "http://localhost/userinfo",
        "introspection_endpoint": "http://localhost/introspect",
        "jwks_uri": "http://localhost/jwks",
    }
).encode()


async def discovery(request: Request) -> Response:
    return Response(_DISCOVERY, media_type="application/json")


async def token(request: Request) -> Response:
    form = dict(parse_qsl((await request.body()).decode()))  # read and parse the body, as idp does
    if form.get("grant_type") != "client_credentials" or "authorization" not in request.headers:
        return JSONResponse({"error": "invalid_request"}, status_code=400)
    return JSONResponse(
        {
            "token_type": "Bearer",
            "access_token": secrets.token_urlsafe(32),
            "expires_in": 900,
            "scope": form.get("scope", ""),
        },
        headers={"cache-control": "no-store"},
    )


# ---- durable: the same request, committed and audited, with nothing in between ----------------

CLIENT_ID = "bench"  # bench/seed.py's client
_KEY = secrets.token_bytes(32)


def _digest(secret: str) -> str:
    return hmac.new(_KEY, secret.encode(), hashlib.sha256).hexdigest()


_SECRET_DIGEST = _digest("bench-secret-0123456789abcdefghijklmnopqrstuvwxyz")
_SCHEMA = """
CREATE TABLE access_tokens (id INTEGER PRIMARY KEY, token_digest TEXT UNIQUE NOT NULL, client_id TEXT NOT NULL,
  user_id INTEGER, scope TEXT NOT NULL, family_id TEXT, issued_at TEXT NOT NULL, expires_at TEXT NOT NULL,
  revoked_at TEXT);
CREATE TABLE audit_events (id INTEGER PRIMARY KEY, at TEXT NOT NULL, kind TEXT NOT NULL, user_id INTEGER,
  client_id TEXT, ip TEXT, user_agent TEXT, outcome TEXT, detail TEXT NOT NULL);
CREATE INDEX audit_events_at ON audit_events(at);
CREATE TABLE users (id INTEGER PRIMARY KEY, subject TEXT UNIQUE NOT NULL, username TEXT NOT NULL, name TEXT,
  email TEXT, email_verified INTEGER NOT NULL, disabled INTEGER NOT NULL);
CREATE INDEX audit_events_kind ON audit_events(kind);
"""


def _database() -> sqlite3.Connection:
    path = Path(tempfile.mkdtemp(prefix="idp-floor-")) / "floor.db"
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.executescript(_SCHEMA)
    return connection


_db = _database() if os.environ.get("FLOOR_MODE", "stack") != "stack" else None
_audit_log = io.StringIO()  # the audit JSON line is built and written; where it goes is not the point


def _basic(header: str | None) -> tuple[str, str] | None:
    if not header or header[:6].lower() != "basic ":
        return None
    client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
    return client_id, secret


def _store(client_id: str, scope: str, ip: str | None, agent: str | None) -> str:
    """The token row and the audit row, committed: what makes an answered token durable."""
    assert _db is not None
    _db.execute("BEGIN")
    access_token = _insert(client_id, scope, ip, agent)
    _db.execute("COMMIT")
    return access_token


def _insert(client_id: str, scope: str, ip: str | None, agent: str | None) -> str:
    assert _db is not None
    access_token = secrets.token_urlsafe(32)
    now = time.time()
    issued, expires = _iso(now), _iso(now + 900)
    detail = json.dumps({"grant_type": "client_credentials", "refresh": False})
    _db.execute(
        "INSERT INTO access_tokens (token_digest, client_id, user_id, scope, family_id, issued_at, expires_at)"
        " VALUES (?, ?, NULL, ?, NULL, ?, ?)",
        (_digest(access_token), client_id, scope, issued, expires),
    )
    _db.execute(
        "INSERT INTO audit_events (at, kind, client_id, ip, user_agent, outcome, detail)"
        " VALUES (?, 'token.issued', ?, ?, ?, 'success', ?)",
        (issued, client_id, ip, agent, detail),
    )
    _audit_log.write(json.dumps({"event": "audit", "at": issued, "kind": "token.issued", "client_id": client_id}))
    _audit_log.seek(0)
    return access_token


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(epoch))


class _GroupCommit:
    """One transaction per turn of the event loop: the rows of every request handled in that
    turn, one COMMIT, then every answer (a failed COMMIT fails them all: nothing answered)."""

    def __init__(self) -> None:
        self.waiters: list[asyncio.Future[None]] = []
        self.batches = 0

    def join(self) -> asyncio.Future[None]:
        assert _db is not None
        loop = asyncio.get_running_loop()
        if not self.waiters:
            _db.execute("BEGIN")
            loop.call_soon(self._commit)
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiters.append(waiter)
        return waiter

    def _commit(self) -> None:
        assert _db is not None
        waiters, self.waiters = self.waiters, []
        self.batches += 1
        try:
            _db.execute("COMMIT")
        except sqlite3.Error as exc:
            _db.execute("ROLLBACK")
            for waiter in waiters:
                waiter.set_exception(exc)
            return
        for waiter in waiters:
            waiter.set_result(None)


_group = _GroupCommit()


async def durable_token(request: Request) -> Response:
    form = dict(parse_qsl((await request.body()).decode()))
    credentials = _basic(request.headers.get("authorization"))
    if (
        credentials is None
        or credentials[0] != CLIENT_ID
        or not hmac.compare_digest(_digest(credentials[1]), _SECRET_DIGEST)
    ):
        return JSONResponse({"error": "invalid_client"}, status_code=401)
    if form.get("grant_type") != "client_credentials":
        return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
    scope = form.get("scope", "")
    peer = request.client.host if request.client else None
    if _GROUPED:
        committed = _group.join()
        access_token = _insert(CLIENT_ID, scope, peer, request.headers.get("user-agent"))
        await committed
    else:
        access_token = _store(CLIENT_ID, scope, peer, request.headers.get("user-agent"))
    body = {"token_type": "Bearer", "access_token": access_token, "expires_in": 900, "scope": scope}
    return JSONResponse(body, headers={"cache-control": "no-store", "pragma": "no-cache"})


# ---- authlib: the durable request, decided by Authlib's grant -------------------------------


class _Client(ClientMixin):  # type: ignore[misc]
    def get_client_id(self) -> str:
        return CLIENT_ID

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(_digest(client_secret), _SECRET_DIGEST)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "client_secret_basic"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"

    def get_allowed_scope(self, scope: str | None) -> str:
        return scope or ""


_CLIENT = _Client()


class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, params: dict[str, str]) -> None:
        self._data = params

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:
        return {k: [v] for k, v in self._data.items()}


class _Request(OAuth2Request):  # type: ignore[misc]
    def __init__(self, headers: Any, params: dict[str, str], ip: str | None) -> None:
        super().__init__(method="POST", uri="http://localhost/token", headers=headers)
        self.payload = _Payload(params)
        self.client_ip = ip

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data


class _Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(scopes_supported=["profile", "email", "openid"])
        self.register_token_generator("default", self._token)
        self.register_grant(grants.ClientCredentialsGrant)

    def query_client(self, client_id: str) -> _Client | None:
        return _CLIENT if client_id == CLIENT_ID else None

    def save_token(self, token: dict[str, Any], request: _Request) -> None:
        token["access_token"] = _store(CLIENT_ID, token["scope"], request.client_ip, request.headers.get("user-agent"))

    def create_oauth2_request(self, request: _Request) -> _Request:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, Any]:
        return status, body, headers

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    @staticmethod
    def _token(
        grant_type: str, client: _Client, user: Any = None, scope: str | None = None, **_: Any
    ) -> dict[str, Any]:
        return {"token_type": "Bearer", "access_token": "", "expires_in": 900, "scope": scope or ""}


_server = _Server()


async def authlib_token(request: Request) -> Response:
    form = dict(parse_qsl((await request.body()).decode()))
    peer = request.client.host if request.client else None
    status, body, headers = _server.create_token_response(_Request(request.headers, form, peer))
    answer = {k.lower(): v for k, v in headers if k.lower() != "content-type"}
    return JSONResponse(body, status_code=status, headers=answer)


_MODE = os.environ.get("FLOOR_MODE", "stack")
_GROUPED = _MODE == "grouped"


def _seed_reader() -> None:
    assert _db is not None
    _db.execute("INSERT INTO users VALUES (1, 'sub-1', 'alice', 'Alice', 'alice@example.com', 1, 0)")
    _db.execute(
        "INSERT INTO access_tokens (token_digest, client_id, user_id, scope, issued_at, expires_at)"
        " VALUES (?, 'bench', 1, 'openid profile email', ?, ?)",
        (_digest("floor-token"), _iso(time.time()), _iso(time.time() + 86400)),
    )


async def userinfo(request: Request) -> Response:
    assert _db is not None
    header = request.headers.get("authorization", "")
    row = (
        _db.execute(
            "SELECT t.expires_at, t.revoked_at, t.scope, u.subject, u.name, u.email, u.email_verified, u.disabled"
            " FROM access_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_digest = ?",
            (_digest(header[7:]),),
        ).fetchone()
        if header[:7].lower() == "bearer "
        else None
    )
    if row is None or row[1] is not None or row[0] <= _iso(time.time()) or row[7]:
        return JSONResponse({"error": "invalid_token"}, status_code=401)
    claims = {"sub": row[3], "name": row[4], "email": row[5], "email_verified": bool(row[6])}
    return JSONResponse(claims, headers={"cache-control": "no-store"})


if _MODE == "read":
    _seed_reader()
_TOKEN = {"stack": token, "durable": durable_token, "grouped": durable_token, "authlib": authlib_token, "read": token}[
    _MODE
]
app = Starlette(
    routes=[
        Route("/.well-known/openid-configuration", discovery),
        Route("/token", _TOKEN, methods=["POST"]),
        Route("/userinfo", userinfo),
    ]
)
