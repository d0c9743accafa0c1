"""Back-Channel Logout 1.0 delivery: after a session ends, each RP it signed into that
registered a `backchannel_logout_uri` is POSTed a logout token. Delivery retries with
backoff, is bounded in time, and every outcome is audited. In the server it runs off the
request path (a task on the event loop); deliveries in flight when a process stops are lost,
and the RPs' own session lifetimes are the backstop (documented in the README). The CLI's
`user disable` and `user reset-mfa` deliver before they return (`deliver_all`)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from idp.audit.trail import record_audit
from idp.clock import Clock
from idp.oidc.clients import ClientRegistry
from idp.oidc.id_tokens import id_token_alg
from idp.oidc.logout import EndedSession, logout_token
from idp.oidc.signing_keys import KeyCache
from idp.security.outbound import Outbound, OutboundError, OutboundRefused
from idp.web.services import Services

log = logging.getLogger("idp.logout")

ATTEMPTS = 3  # each bounded by idp/security/outbound.py (3 s, 64 KiB, allowed networks only)
TOTAL_SECONDS = 30.0  # the bound on one delivery, retries included
BACKOFF_SECONDS = (0.5, 2.0)
_in_flight: set[asyncio.Task[Delivered]] = set()


@dataclass(frozen=True)
class Sender:
    """What a delivery needs: who we are, the key that signs, the RPs' URIs, the audit, the
    time, and the one way out (IDP_OUTBOUND_ALLOWED_NETWORKS)."""

    issuer: str
    keys: KeyCache
    clients: ClientRegistry
    sessions: sessionmaker[Session]
    clock: Clock
    outbound: Outbound

    @classmethod
    def of(cls, services: Services) -> Sender:
        oidc = services.oidc
        return cls(oidc.issuer, oidc.keys, oidc.clients, services.sessions, services.clock, services.outbound)


@dataclass(frozen=True)
class Delivered:
    client_id: str
    sid: str
    outcome: str  # success | failure
    detail: str


def schedule(services: Services, ended: EndedSession) -> None:
    """Starts the deliveries for one ended session without waiting for them."""
    sender = Sender.of(services)
    for client_id, uri in _destinations(sender, ended):
        task = asyncio.get_running_loop().create_task(_deliver(sender, client_id, uri, ended))
        _in_flight.add(task)
        task.add_done_callback(_in_flight.discard)


async def deliver_all(sender: Sender, ended: list[EndedSession]) -> list[Delivered]:
    """Every delivery for these ended sessions, at once, waiting for all (at most TOTAL_SECONDS)."""
    deliveries = [
        _deliver(sender, client_id, uri, one) for one in ended for client_id, uri in _destinations(sender, one)
    ]
    return list(await asyncio.gather(*deliveries))


def _destinations(sender: Sender, ended: EndedSession) -> list[tuple[str, str]]:
    found = []
    for client_id in ended.clients:
        client = sender.clients.get(client_id)
        uri = client.config.get("backchannel_logout_uri") if client is not None else None
        if uri:
            found.append((client_id, uri))
    return found


async def wait_for_deliveries(timeout: float = TOTAL_SECONDS) -> None:
    """For shutdown and tests: let the deliveries in flight finish."""
    if _in_flight:
        await asyncio.wait(set(_in_flight), timeout=timeout)


async def _deliver(sender: Sender, client_id: str, uri: str, ended: EndedSession) -> Delivered:
    outcome, detail = "failure", "timed out"
    try:
        outcome, detail = await asyncio.wait_for(_post_with_retries(sender, client_id, uri, ended), TOTAL_SECONDS)
    except TimeoutError:
        pass
    except Exception as exc:  # noqa: BLE001 - a delivery must never take the process down
        detail = type(exc).__name__
        log.exception("back-channel logout to %s failed", client_id)
    try:
        await run_in_threadpool(_audit, sender, client_id, ended, outcome, detail)
    except Exception:  # noqa: BLE001
        log.exception("auditing a back-channel logout delivery failed")
    return Delivered(client_id, ended.sid, outcome, detail)


async def _post_with_retries(sender: Sender, client_id: str, uri: str, ended: EndedSession) -> tuple[str, str]:
    detail = ""
    alg = id_token_alg(sender.clients.get(client_id))  # Back-Channel Logout §2.6: the alg of its ID tokens
    for attempt in range(ATTEMPTS):
        token = logout_token(
            sender.issuer,
            sender.keys,
            client_id=client_id,
            sub=ended.subject,
            sid=ended.sid,
            now=sender.clock.now(),
            alg=alg,
        )
        try:
            reply = await sender.outbound.post_form(uri, {"logout_token": token})
            if reply.status in (200, 204):
                return "success", f"HTTP {reply.status}"
            detail = f"HTTP {reply.status}"
            if 400 <= reply.status < 500 and reply.status != 429:
                return "failure", detail  # the RP refused this token: sending it again will not help
        except OutboundRefused as exc:
            log.warning("back-channel logout to %s refused: %s", client_id, exc.detail)
            return "failure", f"refused: {exc.detail}"  # the same address would be refused again
        except OutboundError as exc:
            detail = exc.detail
        if attempt < len(BACKOFF_SECONDS):
            await asyncio.sleep(BACKOFF_SECONDS[attempt])
    return "failure", detail


def _audit(sender: Sender, client_id: str, ended: EndedSession, outcome: str, detail: str) -> None:
    with sender.sessions.begin() as db:
        record_audit(
            db,
            "logout.backchannel",
            user_id=ended.user_id,
            client_id=client_id,
            outcome=outcome,
            sid=ended.sid,
            result=detail,
        )
