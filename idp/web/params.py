"""Reads a request's parameters once, refusing what no honest client sends: oversized
bodies, too many or too long parameters, duplicates (RFC 6749 §3.1, §3.2), NUL bytes
and non-UTF-8. The OAuth layer then sees a plain dict."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

MAX_PARAMS = 40
MAX_VALUE_CHARS = 4096


class BadParameters(ValueError):
    """Public message, safe to show."""


async def read_body(request: Request, *, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
        raise BadParameters("The request body is too large.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise BadParameters("The request body is too large.")
    return bytes(body)


async def read_params(request: Request, *, max_bytes: int) -> dict[str, str]:
    if request.method == "GET":
        return parse_params(request.url.query)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise BadParameters("The body must be application/x-www-form-urlencoded.")
    body = await read_body(request, max_bytes=max_bytes)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadParameters("The body is not valid UTF-8.") from None
    return parse_params(text)


def parse_params(text: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=MAX_PARAMS)
    except (ValueError, UnicodeDecodeError):
        raise BadParameters("Too many or malformed parameters.") from None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise BadParameters(f"The parameter '{key[:40]}' is repeated.")
        if len(key) > 100 or len(value) > MAX_VALUE_CHARS or "\x00" in key or "\x00" in value:
            raise BadParameters("A parameter is too long or malformed.")
        params[key] = value
    # Empty values count as absent (RFC 6749 §3.1).
    return {k: v for k, v in params.items() if v != ""}
