"""GET /metrics for Prometheus. Served only to IDP_METRICS_ALLOWED (loopback by default),
judged on the client address as worked out with IDP_TRUSTED_PROXIES, so a request relayed
by nginx for an outside client is refused even though nginx itself is on loopback. The
figures are not secrets, but they tell an attacker how well an attack is going (failed
logins, lockouts, rate-limit hits); deploy/nginx.conf also refuses the path outright."""

from __future__ import annotations

import ipaddress

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from idp.observability.metrics import exposition
from idp.web.oauth_endpoints import NO_STORE, request_ip, services_of


async def metrics(request: Request) -> Response:
    allowed = services_of(request).metrics_allowed
    if not allowed:
        return PlainTextResponse("Not Found", status_code=404, headers=NO_STORE)
    ip = request_ip(request)
    try:
        address = ipaddress.ip_address(ip or "")
    except ValueError:
        address = None
    if address is None or not any(address in network for network in allowed):
        return PlainTextResponse(
            "Forbidden: /metrics is served to IDP_METRICS_ALLOWED only", status_code=403, headers=NO_STORE
        )
    # multi-process mode reads one file per worker: off the event loop
    body, content_type = await run_in_threadpool(exposition)
    return Response(body, media_type=content_type, headers=NO_STORE)
