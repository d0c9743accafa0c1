"""CORS (Fetch standard §3.2) for the endpoints a browser app calls itself: token,
userinfo and revocation. A preflight is answered for any origin that some client
registered; the real answer names the origin only when it belongs to the client that
authenticated (for userinfo: the client the token was issued to), so one client's page
cannot read another's responses. Never Access-Control-Allow-Credentials: these endpoints
take no cookies. Discovery and JWKS are public documents (`*`, static_documents.py);
introspection is for resource servers, not browsers, and has no CORS at all."""

from __future__ import annotations

from collections.abc import Collection

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

ALLOW_HEADERS = "authorization, content-type"
PREFLIGHT_MAX_AGE_SECONDS = 600


def preflight(request: Request, *, methods: tuple[str, ...]) -> Response:
    origin = request.headers.get("origin")
    registered = request.app.state.services.oidc.clients.cors_origins()
    if origin is None or origin not in registered:
        return _refused(
            "This origin is not registered for any client (allowed_cors_origins, or the "
            "redirect_uris of a public client)."
        )
    if request.headers.get("access-control-request-method") not in methods:
        return _refused(f"Only {', '.join(methods)} is allowed here.")
    return Response(
        status_code=204,
        headers={
            "access-control-allow-origin": origin,
            "access-control-allow-methods": ", ".join(methods),
            "access-control-allow-headers": ALLOW_HEADERS,
            "access-control-max-age": str(PREFLIGHT_MAX_AGE_SECONDS),
            "vary": "Origin",
        },
    )


def _refused(description: str) -> Response:
    return JSONResponse(
        {"error": "invalid_request", "error_description": description},
        status_code=403,
        headers={"vary": "Origin", "cache-control": "no-store"},
    )


def allow(request: Request, response: Response, origins: Collection[str]) -> Response:
    """The real answer: readable by the page only if its origin is among `origins` (those of
    the authenticated client; empty when no client authenticated)."""
    response.headers["vary"] = "Origin"  # the answer differs by Origin: caches must keep them apart
    origin = request.headers.get("origin")
    if origin is not None and origin in origins:
        response.headers["access-control-allow-origin"] = origin
        response.headers["access-control-expose-headers"] = "www-authenticate"
    return response
