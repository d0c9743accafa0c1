"""Every request, measured and named (pure ASGI, outermost but for the security headers):
a request id (idp/observability/request_ids.py) in the context and in the X-Request-Id
response header, the latency and status in the Prometheus metrics, and one JSON log line.

An exception nothing else handled is answered here with a plain 500, after logging it with
the request id, so that even that answer carries the id the operator will search for."""

from __future__ import annotations

import logging
import time

from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from idp.observability import access_log
from idp.observability.metrics import request_counters
from idp.observability.request_ids import (
    HEADER,
    accepted_request_id,
    current_request_id,
    new_request_id,
)
from idp.security.client_ip import client_ip, is_trusted, joined_forwarded_for
from idp.web.services import Services
from idp.web.static_documents import DISCOVERY_PATH, JWKS_PATH

log = logging.getLogger("idp")
UNMATCHED = "unmatched"  # one label for every path no route serves: paths are client input


class RequestObservationMiddleware:
    def __init__(self, app: ASGIApp, *, services: Services, routes: list[BaseRoute]) -> None:
        self.app = app
        self.trusted = services.trusted_proxies
        self.clock = services.clock
        # Requests answered before routing (static documents, the site-wide rate limit) have
        # no route in their scope: name them by their path when it is one of ours.
        self.known_paths = frozenset({DISCOVERY_PATH, JWKS_PATH} | {getattr(r, "path", "") for r in routes} - {""})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        peer = scope["client"][0] if scope.get("client") else None
        sent_id = agent = None
        forwarded: list[str] = []
        for name, value in scope["headers"]:  # the first of repeated lines, as Starlette's headers.get
            if name == HEADER:
                sent_id = sent_id if sent_id is not None else value
            elif name == b"x-forwarded-for":
                forwarded.append(value.decode("latin-1"))  # all of them: client_ip.joined_forwarded_for
            elif name == b"user-agent":
                agent = agent if agent is not None else value
        from_proxy = bool(self.trusted) and peer is not None and is_trusted(peer, self.trusted)
        request_id = (accepted_request_id(sent_id) if from_proxy else None) or new_request_id()
        context_token = current_request_id.set(request_id)
        id_header = (HEADER, request_id.encode())
        status = 500
        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                responded = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s (request %s)", scope["method"], scope["path"], request_id)
            if responded:
                raise  # the answer is already on its way: the server cuts the connection
            await PlainTextResponse("Internal error", status_code=500, headers={"cache-control": "no-store"})(
                scope, receive, send_with_id
            )
        finally:
            current_request_id.reset(context_token)
            seconds = time.perf_counter() - started_at
            endpoint = self._endpoint(scope)
            request_counters.observe(endpoint, scope["method"], status, seconds)
            if access_log.enabled():
                ip = client_ip(peer, joined_forwarded_for(forwarded) if from_proxy else None, self.trusted)
                access_log.write_request_line(
                    at=self.clock.now(),
                    request_id=request_id,
                    method=scope["method"],
                    path=scope["path"],
                    endpoint=endpoint,
                    status=status,
                    seconds=seconds,
                    ip=ip,
                    user_agent=agent.decode("latin-1") if agent else None,
                )

    def _endpoint(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None:
            return str(getattr(route, "path", UNMATCHED))
        path = scope["path"]
        return path if path in self.known_paths else UNMATCHED
