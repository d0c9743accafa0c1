"""Moving through the login chain (DESIGN.md §2): after each step the policy names the
next one (idp/login/policy.py); when nothing is missing the chain ends by starting an IdP
session, or upgrading the one a step-up began from, and the parked request resumes.

The lockout counter is reset only when the whole chain has succeeded: a right password
followed by wrong codes keeps counting, so knowing the password does not buy unlimited
code guesses."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from idp.db.models import User
from idp.login import policy
from idp.login import transaction as tx_store
from idp.login.lockout import FailureRecord
from idp.login.sessions import find_session, is_live, start_session, upgrade_session
from idp.oidc.authorize import RedirectToClient
from idp.oidc.logout import EndedSession, describe_ended, end_session
from idp.audit.trail import record_audit
from idp.web import backchannel, cookies
from idp.web.blocking import run_blocking
from idp.web.oauth_endpoints import NO_STORE, request_ip, services_of
from idp.web.services import Services

LOCKED = FailureRecord(remaining=0, locked_now=False, was_locked=True)


@dataclass(frozen=True)
class ChainState:
    """What the policy needs about the chain's user, read in one unit of work."""

    required: str
    next_step: str
    factors: policy.UserFactors


def chain_state(services: Services, tx: tx_store.LoginTransaction) -> ChainState:
    assert tx.user_id is not None
    with services.sessions() as db:
        user = db.get(User, tx.user_id)
        if user is None or user.disabled:
            return ChainState("pwd", policy.UNMET, policy.UserFactors())
        factors = services.factors.factors_of(db, user, count_backup_codes=True)
    client = services.oidc.clients.get(tx.client_id) if tx.client_id else None
    requested = tx.requested_acr
    if client is not None:  # the client's default may have changed since the request was parked
        requested = max(requested, policy.requested_level(None, client.config.get("default_acr_values") or ()),
                        key=policy.LEVELS.__getitem__)
    required = policy.required_level(requested, factors)
    return ChainState(required, policy.next_step(required, tx.steps_done, factors), factors)


async def advance(request: Request, tx: tx_store.LoginTransaction) -> Response | FailureRecord:
    """After a step: on to the next one, or the end of the chain. A FailureRecord means the
    account is locked and the caller answers as for a bad credential."""
    services = services_of(request)
    state = await run_blocking(request, chain_state, services, tx)
    if state.next_step == policy.DONE:
        return await finish(request, tx)
    if state.next_step == policy.UNMET:
        if tx.user_id is None:
            return LOCKED
        await run_blocking(request, tx_store.consume_transaction, services.store, tx.id)
        return _unmet(request, tx)
    if await run_blocking(request, _locked, services, tx.user_id):
        return LOCKED
    await run_blocking(request, tx_store.save_transaction, services.store, tx,
                       ttl_seconds=services.settings.login_ttl_seconds)
    target = {policy.CODE: "/login/code", policy.PASSKEY: "/login/passkey"}.get(state.next_step, "/login/enrol")
    return RedirectResponse(f"{target}?tx={tx.id}", status_code=303, headers=NO_STORE)


def _locked(services: Services, user_id: int | None) -> bool:
    with services.sessions() as db:
        return user_id is not None and services.lockout.is_locked(db, user_id)


def _unmet(request: Request, tx: tx_store.LoginTransaction) -> Response:
    """The level asked for cannot be reached by this user (e.g. phr without a passkey): the
    OIDC error goes back to the RP (OpenID's registered unmet_authentication_requirements),
    to the redirect_uri validated when the request was parked."""
    from idp.web.pages import error_page

    redirect_uri = tx.params.get("redirect_uri")
    if not tx.client_id or not redirect_uri:
        return error_page(request, 403, "Your account cannot sign in at the level asked for.")
    from idp.web.authorize import to_client

    error = {"error": "unmet_authentication_requirements",
             "error_description": "The user cannot authenticate at the level requested."}
    if tx.params.get("state"):
        error["state"] = tx.params["state"]
    error["iss"] = services_of(request).oidc.issuer  # RFC 9207
    separator = "&" if urlsplit(redirect_uri).query else "?"
    return to_client(request, RedirectToClient(redirect_uri + separator + urlencode(error), redirect_uri,
                                               tuple(error.items()), tx.params.get("response_mode") == "form_post"))


async def finish(request: Request, tx: tx_store.LoginTransaction) -> Response | FailureRecord:
    """The chain's end, once per transaction: a second request that reached the end too (a
    race, a replayed form) is refused like a bad credential and starts no second session."""
    services = services_of(request)
    ttl = services.settings.login_ttl_seconds
    if not await run_blocking(request, tx_store.claim_finish, services.store, tx.id, ttl_seconds=ttl):
        return LOCKED
    ip = request_ip(request)
    done = await run_blocking(request, _finish, services, tx, ip, request.headers.get("user-agent"),
                              cookies.read(request, cookies.SESSION))
    if done is None:
        return LOCKED
    cookie, sid, evicted = done
    for ended in evicted:  # sessions beyond the per-user cap, or replaced: their RPs hear of it too
        backchannel.schedule(services, ended)
    if tx.return_to is None:  # kept, finished, for the one resume of the parked request
        await run_blocking(request, tx_store.save_transaction, services.store, tx.finished_by(sid), ttl_seconds=ttl)
    else:
        await run_blocking(request, tx_store.consume_transaction, services.store, tx.id)
    response = RedirectResponse(tx.resume_url, status_code=303, headers=NO_STORE)
    cookies.put(response, request, cookies.SESSION, cookie)
    return response


def _finish(services: Services, tx: tx_store.LoginTransaction, ip: str | None, agent: str | None,
            browser_cookie: str | None) -> tuple[str, str, list[EndedSession]] | None:
    """(new session cookie value, sid, sessions ended: by the cap, or the other user's this
    browser held); None when the account is locked.

    One session per browser: a re-authentication (prompt=login, max_age, /account) by the
    user the browser's session belongs to renews that session (same sid, new cookie value,
    so a copy of the old value dies with it); another user signing in ends it."""
    assert tx.user_id is not None
    acr, amr = policy.acr_of(tx.steps_done), policy.amr_of(tx.steps_done)
    with services.sessions.begin() as db:
        if tx.step_up_sid is not None and not is_live(db, tx.step_up_sid, tx.user_id):
            return None  # the chain's earlier credit came from that session: with it gone, nothing is left
        if not services.lockout.record_success(db, tx.user_id):
            record_audit(db, "login.refused", user_id=tx.user_id, ip=ip, user_agent=agent, outcome="refused",
                         reason="locked")
            return None
        user = db.get(User, tx.user_id)
        if user is None or user.disabled:
            return None
        record_audit(db, "login.succeeded", user_id=user.id, ip=ip, user_agent=agent, outcome="success",
                     acr=acr, amr=amr, client_id=tx.client_id or None, step_up=tx.step_up_sid is not None)
        if tx.step_up_sid is not None:
            upgraded = upgrade_session(db, services.keyring, user.id, tx.step_up_sid, acr=acr, amr=amr, ip=ip)
            return None if upgraded is None else (upgraded[0], upgraded[1].sid, [])
        held = find_session(db, services.keyring, services.session_policy, browser_cookie)
        if held is not None and held[1].id == user.id:
            renewed = upgrade_session(db, services.keyring, user.id, held[0].sid, acr=acr, amr=amr, ip=ip)
            if renewed is not None:
                return renewed[0], renewed[1].sid, []
        replaced = end_session(db, held[0].id) if held is not None and held[1].id != user.id else None
        if replaced is not None:
            record_audit(db, "session.replaced", user_id=replaced.user_id, ip=ip, user_agent=agent, outcome="success",
                         sid=replaced.sid, by_user=user.id)
        cookie, row = start_session(db, services.keyring, services.session_policy, user, acr=acr, amr=amr,
                                    user_agent=agent, ip=ip)
        ended = [describe_ended(db, sid) for sid in db.info.pop("ended_sids", [])] + [replaced]
        return cookie, row.sid, [e for e in ended if e is not None]
