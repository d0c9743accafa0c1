"""The Python HTTP stack's floor: the same uvicorn (uvloop + httptools) and Starlette that
idp runs, serving a token-shaped POST with no database, no client lookup and no crypto. No
idp request can be faster than this on one core; the report sets idp's single-request rows
beside it, so that the part of the gap to the peer that is the stack, not idp, is measured."""

from __future__ import annotations

import json
import secrets
from urllib.parse import parse_qsl

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


app = Starlette(
    routes=[Route("/.well-known/openid-configuration", discovery), Route("/token", token, methods=["POST"])]
)
