"""Web origins (RFC 6454) as browsers send them in `Origin`: lower-case scheme and host, the
port only when it is not the scheme's default. Used for a client's CORS origins and the
CSP sources of pages that lead back to it."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_HOST = re.compile(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]")
DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(uri: str | None) -> str | None:
    """The origin of an http(s) URI, or None for anything that is not plainly one (other
    schemes, userinfo, odd characters in the host, a bad port)."""
    try:
        parts = urlsplit(uri or "")
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc).lower()
    if scheme not in DEFAULT_PORTS or not _HOST.fullmatch(host):
        return None
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, DEFAULT_PORTS[scheme]) else "")
