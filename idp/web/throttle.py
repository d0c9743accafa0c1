"""Rate limits at the HTTP edge: the 429 answers (a page for people, a JSON error for API
clients, Retry-After for both), the checks in front of a credential step and the spending
of the failure budget after one failed, the site-wide per-IP middleware, and the audit of
refusals (the first refusal of a key per window is audited, not every one: a flood must
not turn into a flood of database writes)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from idp.audit import refusals
from idp.security.client_ip import client_ip, joined_forwarded_for
from idp.security.rate_limits import ALLOWED, Verdict
from idp.web.blocking import run_blocking
from idp.web.services import Services

log = logging.getLogger("idp.rate_limits")

API_PATHS = ("/token", "/revoke", "/introspect", "/userinfo", "/jwks", "/.well-known/")


def is_api_path(path: str) -> bool:
    return path.startswith(API_PATHS)


def retry_message(seconds: int) -> str:
    wait = f"{seconds} seconds" if seconds < 120 else f"{(seconds + 59) // 60} minutes"
    return f"Too many attempts. Wait {wait} and try again."


def too_many_json(verdict: Verdict) -> Response:
    return JSONResponse(
        {"error": "too_many_requests", "error_description": retry_message(verdict.retry_after)},
        status_code=429,
        headers={"retry-after": str(verdict.retry_after), "cache-control": "no-store", "pragma": "no-cache"},
    )


def too_many_page(request: Request, verdict: Verdict) -> Response:
    from idp.web.pages import (
        error_page,  # pages import services; keep this module light
    )

    response = error_page(request, 429, retry_message(verdict.retry_after))
    response.headers["retry-after"] = str(verdict.retry_after)
    return response


def credential_checks(ip: str | None, account: str | None = None) -> list[tuple[str, str]]:
    """The limits in front of a credential check, in order: the failure budget first (only
    tested: a refused attempt counts nowhere), then the flood guard and the account name."""
    checks = [("login_failures_ip", ip or "-"), ("login_ip", ip or "-")]
    return checks + ([("login_account", account)] if account is not None else [])


async def check_limits(
    request: Request, checks: Sequence[tuple[str, str]], *, ip: str | None, client_id: str | None = None
) -> Verdict:
    """Admits the request under every (scope, key) in order (RateLimits.admit: counted, or
    for a failure budget tested) and returns the first refusal, audited."""
    services: Services = request.app.state.services
    limits = services.rate_limits
    for scope, key in checks:
        if limits.needs_network(scope):
            verdict = await run_blocking(request, limits.admit, scope, key)
        else:
            verdict = limits.admit(scope, key)
        if not verdict.allowed:
            await run_blocking(
                request,
                audit_refusal,
                services,
                verdict,
                key,
                ip,
                client_id,
                request.headers.get("user-agent"),
                request.url.path,
            )
            return verdict
    return ALLOWED


async def record_failed_check(request: Request, ip: str | None) -> None:
    """Spends the client's failure budget: call it for every 401 a credential step answers
    (a locked account's too, so a right password costs what a wrong one does)."""
    limits = request.app.state.services.rate_limits
    if limits.needs_network("login_failures_ip"):
        await run_blocking(request, limits.record, "login_failures_ip", ip or "-")
    else:
        limits.record("login_failures_ip", ip or "-")


def audit_refusal(
    services: Services,
    verdict: Verdict,
    key: str,
    ip: str | None,
    client_id: str | None,
    user_agent: str | None,
    path: str,
) -> None:
    refusals.audit_refusal(
        services.sessions,
        services.store,
        services.keyring,
        verdict,
        key,
        ip=ip,
        client_id=client_id,
        user_agent=user_agent,
        path=path,
    )


class SiteRateLimitMiddleware:
    """Every request, per client IP, per process (idp/security/rate_limits.py says why)."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        self.enabled = bool(services.rate_limits.rules["site_ip"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        peer = scope["client"][0] if scope.get("client") else None
        forwarded = None
        if self.services.trusted_proxies:
            forwarded = joined_forwarded_for(
                [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
            )
        ip = client_ip(peer, forwarded, self.services.trusted_proxies)
        verdict = self.services.rate_limits.hit("site_ip", ip or "-")
        if verdict.allowed:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        agent = request.headers.get("user-agent")
        try:
            await run_in_threadpool(audit_refusal, self.services, verdict, ip or "-", ip, None, agent, scope["path"])
        except Exception:  # noqa: BLE001 - the 429 matters more than its audit row
            log.exception("auditing a site-wide rate-limit refusal failed")
        response = too_many_json(verdict) if is_api_path(scope["path"]) else too_many_page(request, verdict)
        await response(scope, receive, send)
