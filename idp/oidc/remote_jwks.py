"""A client's jwks_uri (private_key_jwt), fetched over https with a short timeout, a size
cap and a small cache, so one slow RP cannot stall token requests for long."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
from authlib.oauth2.rfc6749.errors import InvalidClientError

_CACHE_SECONDS = 300
_MAX_BYTES = 64 * 1024
_cache: dict[str, tuple[float, dict[str, Any]]] = {}
_lock = threading.Lock()


def fetch_client_jwks(uri: str) -> dict[str, Any]:
    with _lock:
        hit = _cache.get(uri)
    if hit and time.monotonic() - hit[0] < _CACHE_SECONDS:
        return hit[1]
    try:
        response = httpx.get(uri, timeout=3.0, follow_redirects=False)
        response.raise_for_status()
        if len(response.content) > _MAX_BYTES:
            raise ValueError("jwks too large")
        jwks = response.json()
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise ValueError("not a JWK Set")
    except (httpx.HTTPError, ValueError) as exc:
        raise InvalidClientError(description="The client's jwks_uri could not be read.") from exc
    with _lock:
        _cache[uri] = (time.monotonic(), jwks)
    return jwks
