"""A request's redirect_uri against a client's registered ones: an exact string match
(RFC 6749 §3.1.2.3, RFC 9700 §4.1.3), except that a native app's loopback IP redirect may
name any port (RFC 8252 §7.3): the app listens on whatever port its system gives it. Never
for `localhost` (RFC 8252 §8.3: a name may resolve elsewhere), never for web clients."""

from __future__ import annotations

import re
from collections.abc import Iterable

# http, an IP literal as written (no 127.1, no [0:0:0:0:0:0:0:1]), an optional port without
# leading zeros, then the path, the query or the end: "127.0.0.1:1@evil.example" is no match
_LOOPBACK_IP = re.compile(r"http://(127\.0\.0\.1|\[::1\])(?::([1-9][0-9]{0,4}))?(?=[/?]|\Z)")


def without_loopback_port(uri: str) -> str | None:
    """`uri` with its port taken out when it is a loopback IP redirect; None otherwise."""
    match = _LOOPBACK_IP.match(uri)
    if match is None or int(match.group(2) or 80) > 65535:
        return None
    return f"http://{match.group(1)}{uri[match.end() :]}"


def check_redirect_uri(redirect_uri: str, registered: Iterable[str], *, native: bool) -> bool:
    registered = tuple(registered)
    if redirect_uri in registered:
        return True
    portless = without_loopback_port(redirect_uri) if native else None
    return portless is not None and any(without_loopback_port(uri) == portless for uri in registered)
