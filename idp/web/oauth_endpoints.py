"""HTTP glue for the machine-facing endpoints: token, revocation, introspection, userinfo,
discovery and JWKS. Read the request once, run the sync OAuth core in the threadpool
with one unit of work, turn its result into a response."""

from __future__ import annotations

import base64
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from idp.oidc.request import IdpRequest
from idp.oidc.server import OAuthResponse
from idp.oidc.userinfo import UserInfo, UserInfoError, userinfo_for
from idp.security.client_ip import client_ip, joined_forwarded_for
from idp.web import cors
from idp.web.blocking import run_blocking
from idp.web.params import BadParameters, read_params
from idp.web.services import Services

NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}


def services_of(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def request_ip(request: Request) -> str | None:
    services = services_of(request)
    peer = request.client.host if request.client else None
    forwarded = joined_forwarded_for(request.headers.getlist("x-forwarded-for")) if services.trusted_proxies else None
    return client_ip(peer, forwarded, services.trusted_proxies)


def oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status, headers=NO_STORE)


def to_response(result: OAuthResponse) -> Response:
    headers = {k.lower(): v for k, v in result.headers if k.lower() != "content-type"}
    headers.update(NO_STORE)
    if isinstance(result.body, dict):
        return JSONResponse(result.body, status_code=result.status, headers=headers)
    return Response(result.body, status_code=result.status, headers=headers)


async def _run_endpoint(request: Request, call: Any, *, cors_allowed: bool = False) -> Response:
    """`cors_allowed`: a browser app may call this endpoint (idp/web/cors.py)."""
    services = services_of(request)
    if request.method == "OPTIONS" and cors_allowed:
        return cors.preflight(request, methods=("POST",))
    if request.method != "POST":
        response = oauth_error(405, "invalid_request", "Use POST.")
        response.headers["allow"] = "POST"
        return response
    try:
        params = await read_params(request, max_bytes=services.settings.max_body_bytes)
    except BadParameters as exc:
        return oauth_error(400, "invalid_request", str(exc))
    if not _basic_credentials_readable(request.headers.get("authorization")):
        response = oauth_error(401, "invalid_client", "Client authentication failed.")
        response.headers["www-authenticate"] = 'Basic error="invalid_client"'
        return response
    ip = request_ip(request)

    def unit_of_work() -> tuple[OAuthResponse, frozenset[str]]:
        with services.sessions.begin() as db:
            oauth_request = IdpRequest(
                method="POST",
                uri=f"{services.oidc.issuer}{request.url.path}",
                headers=request.headers,
                params=params,
                db=db,
                ctx=services.oidc,
                client_ip=ip,
            )
            result = call(services.server, oauth_request)
            # the client that authenticated in this request, if it got that far
            client = oauth_request.authenticated_client
            return result, client.cors_origins if client is not None else frozenset()

    result, origins = await run_blocking(request, unit_of_work)
    response = to_response(result)
    return cors.allow(request, response, origins) if cors_allowed else response


def _basic_credentials_readable(header: str | None) -> bool:
    """Authlib decodes Basic credentials without catching bad UTF-8: refuse those here."""
    if not header or " " not in header:
        return True  # Authlib ignores these
    parts = header.split(None, 1)
    if len(parts) != 2:
        return False  # Authlib would fail to unpack it
    if parts[0].lower() != "basic":
        return True
    try:
        decoded = base64.b64decode(parts[1].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return False
    return ":" in decoded and len(decoded) <= 1024


async def token(request: Request) -> Response:
    return await _run_endpoint(request, lambda server, req: server.create_token_response(req), cors_allowed=True)


async def revoke(request: Request) -> Response:
    return await _run_endpoint(
        request, lambda server, req: server.create_endpoint_response("revocation", req), cors_allowed=True
    )


async def introspect(request: Request) -> Response:
    return await _run_endpoint(request, lambda server, req: server.create_endpoint_response("introspection", req))


async def userinfo(request: Request) -> Response:
    services = services_of(request)
    if request.method == "OPTIONS":
        return cors.preflight(request, methods=("GET", "POST"))
    try:
        access_token = await _bearer_token(request, services)
    except BadParameters as exc:
        return oauth_error(400, "invalid_request", str(exc))

    def unit_of_work() -> UserInfo | UserInfoError:
        with services.engine.connect() as conn:  # read-only: no transaction bookkeeping beyond the driver's
            return userinfo_for(conn, services.oidc, access_token, now=services.clock.now())

    result = await run_blocking(request, unit_of_work)
    if isinstance(result, UserInfoError):
        challenge = f'Bearer error="{result.error}", error_description="{result.description}"'
        if access_token is None:
            challenge = 'Bearer realm="idp"'  # RFC 6750 §3.1: no error code when no credentials were sent
        headers = {**NO_STORE, "www-authenticate": challenge}
        error = JSONResponse({"error": result.error, "error_description": result.description}, result.status, headers)
        return cors.allow(request, error, ())  # no valid token, no client: the page may not read it
    client = services.oidc.clients.get(result.client_id)
    return cors.allow(request, JSONResponse(result.claims, headers=NO_STORE), client.cors_origins if client else ())


async def _bearer_token(request: Request, services: Services) -> str | None:
    header = request.headers.get("authorization", "")
    from_header = header[7:].strip() if header[:7].lower() == "bearer " else None
    from_body = None
    if request.method == "POST" and request.headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        from_body = (await read_params(request, max_bytes=services.settings.max_body_bytes)).get("access_token")
    if from_header and from_body:
        raise BadParameters("Send the access token in one place only.")  # RFC 6750 §2
    return from_header or from_body
