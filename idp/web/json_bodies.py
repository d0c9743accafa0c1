"""JSON bodies of the passkey ceremonies (idp/static/passkeys.js): every call carries the
page's CSRF token in its JSON body; answers are JSON, errors {"error": …} with a 4xx status."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from idp.security import csrf
from idp.web import cookies
from idp.web.oauth_endpoints import NO_STORE, services_of
from idp.web.params import BadParameters, read_body

JSON_MAX_BYTES = 64 * 1024


def json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=NO_STORE)


async def read_json(request: Request) -> dict[str, Any] | Response:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return json_error(400, "The body must be application/json.")
    try:
        body = await read_body(request, max_bytes=JSON_MAX_BYTES)
        data = json.loads(body)
    except (BadParameters, ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return json_error(400, "The body is not a JSON object of a sensible size.")
    if not isinstance(data, dict):
        return json_error(400, "The body is not a JSON object.")
    keyring = services_of(request).keyring
    if not csrf.check_csrf(keyring, cookies.read(request, cookies.CSRF), data.get("csrf_token")):
        return json_error(403, "The page expired. Reload it and try again.")
    return data


def options_response(challenge_id: str, options_json: str) -> Response:
    return JSONResponse({"challenge_id": challenge_id, "publicKey": json.loads(options_json)}, headers=NO_STORE)
