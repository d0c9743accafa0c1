"""Back-Channel Logout 1.0 delivery: after a session ends, each RP it signed into that
registered a `backchannel_logout_uri` is POSTed a logout token. Delivery runs off the
request path (a task on the event loop), retries with backoff, is bounded in time, and
every outcome is audited. Deliveries in flight when a process stops are lost: the RPs'
own session lifetimes are the backstop (documented in the README)."""
from __future__ import annotations

import asyncio
import logging

import httpx
from starlette.concurrency import run_in_threadpool

from idp.oidc.logout import EndedSession, logout_token
from idp.security.audit import record_audit
from idp.web.services import Services

log = logging.getLogger("idp.logout")

ATTEMPTS = 3
ATTEMPT_TIMEOUT_SECONDS = 5.0
TOTAL_SECONDS = 30.0  # the bound on one delivery, retries included
BACKOFF_SECONDS = (0.5, 2.0)
_in_flight: set[asyncio.Task[None]] = set()


def schedule(services: Services, ended: EndedSession) -> None:
    """Starts the deliveries for one ended session without waiting for them."""
    for client_id in ended.clients:
        client = services.oidc.clients.get(client_id)
        uri = client.config.get("backchannel_logout_uri") if client is not None else None
        if not uri:
            continue
        task = asyncio.get_running_loop().create_task(_deliver(services, client_id, uri, ended))
        _in_flight.add(task)
        task.add_done_callback(_in_flight.discard)


async def wait_for_deliveries(timeout: float = TOTAL_SECONDS) -> None:
    """For shutdown and tests: let the deliveries in flight finish."""
    if _in_flight:
        await asyncio.wait(set(_in_flight), timeout=timeout)


async def _deliver(services: Services, client_id: str, uri: str, ended: EndedSession) -> None:
    outcome, detail = "failure", "timed out"
    try:
        outcome, detail = await asyncio.wait_for(_post_with_retries(services, client_id, uri, ended), TOTAL_SECONDS)
    except asyncio.TimeoutError:
        pass
    except Exception as exc:  # noqa: BLE001 - a delivery must never take the process down
        detail = type(exc).__name__
        log.exception("back-channel logout to %s failed", client_id)
    try:
        await run_in_threadpool(_audit, services, client_id, ended, outcome, detail)
    except Exception:  # noqa: BLE001
        log.exception("auditing a back-channel logout delivery failed")


async def _post_with_retries(services: Services, client_id: str, uri: str, ended: EndedSession) -> tuple[str, str]:
    detail = ""
    async with httpx.AsyncClient(timeout=ATTEMPT_TIMEOUT_SECONDS, follow_redirects=False) as http:
        for attempt in range(ATTEMPTS):
            token = logout_token(services.oidc, client_id=client_id, sub=ended.subject, sid=ended.sid)
            try:
                response = await http.post(uri, data={"logout_token": token},
                                           headers={"cache-control": "no-store"})
                if response.status_code in (200, 204):
                    return "success", f"HTTP {response.status_code}"
                detail = f"HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    return "failure", detail  # the RP refused this token: sending it again will not help
            except httpx.HTTPError as exc:
                detail = type(exc).__name__
            if attempt < len(BACKOFF_SECONDS):
                await asyncio.sleep(BACKOFF_SECONDS[attempt])
    return "failure", detail


def _audit(services: Services, client_id: str, ended: EndedSession, outcome: str, detail: str) -> None:
    with services.sessions.begin() as db:
        record_audit(db, "logout.backchannel", user_id=ended.user_id, client_id=client_id, outcome=outcome,
                     sid=ended.sid, result=detail)
