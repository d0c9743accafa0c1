"""The passkey ceremonies over JSON (called by idp/static/passkeys.js): sign-in as a login
step (usernameless, username-first, or as the next step after a password / for a
step-up), and registration, rename and removal on /account.

Every call carries the page's CSRF token in its JSON body; answers are JSON: the options
for navigator.credentials, then {"redirect": …} or {"error": …} with a 4xx status."""
from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from idp.db.models import User
from idp.login import transaction as tx_store
from idp.login.lockout import FailureRecord
from idp.login.sessions import find_session
from idp.login.steps.password import normalize_username
from idp.mfa.passkeys import PasskeyError, SignedIn
from idp.oidc.logout import EndedSession
from idp.security import csrf
from idp.security.audit import record_audit
from idp.web import cookies, login_binding
from idp.web.account_sessions import (
    REAUTH_URL,
    current_session,
    end_others_and_revoke_tokens,
    needs_reauth,
    schedule_backchannel,
    valid_row_id,
)
from idp.web.blocking import run_blocking
from idp.web.chain import advance
from idp.web.forms import read_form
from idp.web.login import failure_message
from idp.web.oauth_endpoints import NO_STORE, request_ip, services_of
from idp.web.pages import copy_cookies, error_page
from idp.web.params import BadParameters, read_body
from idp.web.services import Services
from idp.web.throttle import (
    check_limits,
    credential_checks,
    record_failed_check,
    too_many_json,
)

JSON_MAX_BYTES = 64 * 1024
SIGN_IN_FAILED = "That passkey could not sign you in."
EXPIRED = "This sign-in has expired. Reload the page and try again."


def _json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=NO_STORE)


async def _read_json(request: Request) -> dict[str, Any] | Response:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return _json_error(400, "The body must be application/json.")
    try:
        body = await read_body(request, max_bytes=JSON_MAX_BYTES)
        data = json.loads(body)
    except (BadParameters, ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return _json_error(400, "The body is not a JSON object of a sensible size.")
    if not isinstance(data, dict):
        return _json_error(400, "The body is not a JSON object.")
    keyring = services_of(request).keyring
    if not csrf.check_csrf(keyring, cookies.read(request, cookies.CSRF), data.get("csrf_token")):
        return _json_error(403, "The page expired. Reload it and try again.")
    return data


def _options(challenge_id: str, options_json: str) -> Response:
    return JSONResponse({"challenge_id": challenge_id, "publicKey": json.loads(options_json)}, headers=NO_STORE)


# ---- sign-in ------------------------------------------------------------------------------

async def sign_in_options(request: Request) -> Response:
    services = services_of(request)
    data = await _read_json(request)
    if isinstance(data, Response):
        return data
    tx = await _step_transaction(request, data.get("tx"))
    if tx is None:  # no transaction of this browser's still open: signing in to idp itself
        tx = tx_store.new_transaction({}, "", "", None, return_to="/account",
                                      browser=login_binding.for_new_transaction(request))
        await run_blocking(request, tx_store.save_transaction, services.store, tx,
                           ttl_seconds=services.settings.login_ttl_seconds)
    typed = data.get("username")
    username = normalize_username(typed)[:128] if isinstance(typed, str) and typed.strip() else None
    ip = request_ip(request)
    # options check no credential: a count of their own (the login page asks on every load)
    checks = [("passkey_options_ip", ip or "-")] + ([("login_account", username)] if username else [])
    verdict = await check_limits(request, checks, ip=ip)
    if not verdict.allowed:
        return too_many_json(verdict)
    # a chain that already named its user (password done, or a step-up) signs in that user only
    challenge = await run_blocking(request, _sign_in_options, services, tx, username)
    return login_binding.attach(request, JSONResponse(
        {"challenge_id": challenge.id, "tx": tx.id, "publicKey": json.loads(challenge.options_json)}, headers=NO_STORE))


async def _step_transaction(request: Request, tx_id: object) -> tx_store.LoginTransaction | None:
    """The transaction a passkey step names, if this browser started it and its chain is
    still open (the JSON twin of authorize.load_step_transaction)."""
    tx = await run_blocking(request, tx_store.find_transaction, services_of(request).store, tx_id)
    if tx is None or tx.finished or not tx.is_bound_to(login_binding.presented(request)):
        return None
    return tx


def _sign_in_options(services: Services, tx: tx_store.LoginTransaction, username: str | None):  # type: ignore[no-untyped-def]
    with services.sessions.begin() as db:
        if tx.user_id is not None:
            return services.passkeys.sign_in_options(db, tx_id=tx.id, user_id=tx.user_id)
        return services.passkeys.sign_in_options(db, tx_id=tx.id, username=username)


async def sign_in_verify(request: Request) -> Response:
    services = services_of(request)
    data = await _read_json(request)
    if isinstance(data, Response):
        return data
    tx = await _step_transaction(request, data.get("tx"))
    if tx is None:
        return _json_error(400, EXPIRED)
    ip = request_ip(request)
    verdict = await check_limits(request, credential_checks(ip), ip=ip)
    if not verdict.allowed:
        return too_many_json(verdict)
    agent = request.headers.get("user-agent")
    result = await run_blocking(request, _verify_sign_in, services, tx, data.get("challenge_id"),
                                data.get("credential"), ip, agent)
    if isinstance(result, (FailureRecord, str)):
        await record_failed_check(request, ip)
    if isinstance(result, FailureRecord):
        return _json_error(401, failure_message(services, result, SIGN_IN_FAILED))
    if isinstance(result, str):
        return _json_error(401, SIGN_IN_FAILED)
    chained = tx.with_step(result.methods[0], user_id=result.user_id)
    chained = chained.with_step(result.methods[1])
    outcome = await advance(request, chained)
    if isinstance(outcome, FailureRecord) or "location" not in outcome.headers:
        await record_failed_check(request, ip)
    if isinstance(outcome, FailureRecord):
        return _json_error(401, failure_message(services, outcome, SIGN_IN_FAILED))
    if "location" not in outcome.headers:  # the chain ended without a way on (e.g. the account was disabled)
        return _json_error(401, SIGN_IN_FAILED)
    return copy_cookies(outcome, JSONResponse({"redirect": outcome.headers["location"]}, headers=NO_STORE))


def _verify_sign_in(services: Services, tx: tx_store.LoginTransaction, challenge_id: object, credential: object,
                    ip: str | None, agent: str | None) -> SignedIn | FailureRecord | str:
    """The verified sign-in; a FailureRecord when a known user's assertion failed (counted
    toward the lockout); a reason when no user can be blamed (unknown credential, bad JSON)."""
    with services.sessions.begin() as db:
        try:
            signed = services.passkeys.sign_in(db, tx_id=tx.id, challenge_id=challenge_id, credential=credential)
        except PasskeyError as exc:
            blamed = tx.user_id or services.passkeys.owner_of(db, credential)
            if exc.reason == "sign counter went backwards":
                record_audit(db, "passkey.counter_regression", user_id=blamed, ip=ip, user_agent=agent,
                             outcome="refused")
            record_audit(db, "login.passkey.failed", user_id=blamed, ip=ip, user_agent=agent, outcome="failure",
                         reason=exc.reason)
            if blamed is None:
                return exc.reason
            failure = services.lockout.record_failure(db, blamed)
            if failure.locked_now:
                record_audit(db, "account.locked", user_id=blamed, ip=ip, user_agent=agent, outcome="success",
                             known_user=True)
            return failure
        if not tx.accepts_user(signed.user_id):  # another identity than the chain named: never merged
            record_audit(db, "login.passkey.failed", user_id=signed.user_id, ip=ip, user_agent=agent,
                         outcome="refused", reason="other_identity")
            return "other identity"
        if services.lockout.is_locked(db, signed.user_id):
            record_audit(db, "login.passkey.failed", user_id=signed.user_id, ip=ip, user_agent=agent,
                         outcome="refused", reason="locked")
            return FailureRecord(remaining=0, locked_now=False, was_locked=True)
        record_audit(db, "login.passkey.succeeded", user_id=signed.user_id, ip=ip, user_agent=agent,
                     outcome="success", methods=list(signed.methods))
        return signed


# ---- /account: register, rename, remove ------------------------------------------------------

def _session_user(services: Services, cookie: str | None) -> tuple[int, float] | None:
    """(user id, seconds since the session's last interactive sign-in) for the session."""
    from idp.clock import utcnow

    with services.sessions.begin() as db:
        found = find_session(db, services.keyring, services.session_policy, cookie)
        if found is None:
            return None
        row, user = found
        return user.id, (utcnow() - row.auth_time).total_seconds()


async def _signed_in_json(request: Request) -> tuple[dict[str, Any], int] | Response:
    """The JSON body (CSRF checked) and the signed-in user's id, or the error answer."""
    data = await _read_json(request)
    if isinstance(data, Response):
        return data
    session = await run_blocking(request, _session_user, services_of(request), cookies.read(request, cookies.SESSION))
    if session is None:
        return _json_error(401, "Sign in first.")
    return data, session[0]


async def registration_options(request: Request) -> Response:
    services = services_of(request)
    signed_in = await _signed_in_json(request)
    if isinstance(signed_in, Response):
        return signed_in
    challenge = await run_blocking(request, _registration_options, services, signed_in[1])
    return _options(challenge.id, challenge.options_json)


def _registration_options(services: Services, user_id: int):  # type: ignore[no-untyped-def]
    with services.sessions.begin() as db:
        user = db.get(User, user_id)
        assert user is not None
        return services.passkeys.registration_options(db, user)


async def register(request: Request) -> Response:
    services = services_of(request)
    signed_in = await _signed_in_json(request)
    if isinstance(signed_in, Response):
        return signed_in
    data, user_id = signed_in
    ip, agent = request_ip(request), request.headers.get("user-agent")
    error = await run_blocking(request, _register, services, user_id, data, ip, agent)
    if error:
        return _json_error(400, "The passkey could not be added. Try again.")
    return JSONResponse({"redirect": "/account"}, headers=NO_STORE)


def _register(services: Services, user_id: int, data: dict[str, Any], ip: str | None, agent: str | None) -> str:
    with services.sessions.begin() as db:
        user = db.get(User, user_id)
        assert user is not None
        try:
            row = services.passkeys.register(db, user, data.get("challenge_id"), data.get("credential"),
                                             data.get("name"))
        except PasskeyError as exc:
            db.rollback()
            with services.sessions.begin() as audit_db:
                record_audit(audit_db, "passkey.registration_failed", user_id=user_id, ip=ip, user_agent=agent,
                             outcome="failure", reason=exc.reason)
            return exc.reason
        record_audit(db, "passkey.added", user_id=user_id, ip=ip, user_agent=agent, outcome="success",
                     passkey=row.id, name=row.name)
        return ""


async def rename(request: Request) -> Response:
    return await _change(request, "rename")


async def remove(request: Request) -> Response:
    return await _change(request, "remove")


async def _change(request: Request, action: str) -> Response:
    """Rename or remove. Removing needs a sign-in no older than settings.reauth_seconds (a
    stolen session alone cannot do it), checked first; with
    settings.passkey_removal_ends_sessions = 1 it also ends the user's other sessions
    (back-channel logout for each) and revokes every refresh token of theirs."""
    services = services_of(request)
    params = await read_form(request)
    if isinstance(params, Response):
        return params
    session = await run_blocking(request, current_session, services, cookies.read(request, cookies.SESSION))
    if session is None:
        return RedirectResponse("/login", status_code=303, headers=NO_STORE)
    passkey_id = valid_row_id(request.path_params.get("passkey_id"))
    if passkey_id is None:
        return error_page(request, 404, "No such passkey.")
    if action == "remove" and needs_reauth(services.settings, session.auth_time):
        # a fresh sign-in first: the chain sends the user back to /account afterwards
        return RedirectResponse(REAUTH_URL, status_code=303, headers=NO_STORE)
    ip, agent = request_ip(request), request.headers.get("user-agent")
    done = await run_blocking(request, _apply_change, services, action, session.user_id, session.session_id,
                              passkey_id, params.get("name"), ip, agent)
    if done is None:
        return error_page(request, 404, "No such passkey.")
    schedule_backchannel(services, done)
    return RedirectResponse("/account", status_code=303, headers=NO_STORE)


def _apply_change(services: Services, action: str, user_id: int, session_id: int, passkey_id: int, name: str | None,
                  ip: str | None, agent: str | None) -> list[EndedSession] | None:
    """None when the user has no such passkey; else the sessions the removal ended."""
    from idp.mfa.passkeys import clean_name

    with services.sessions.begin() as db:
        row = services.passkeys.find(db, user_id, passkey_id)
        if row is None:
            return None
        if action == "rename":
            row.name = clean_name(name)
            record_audit(db, "passkey.renamed", user_id=user_id, ip=ip, user_agent=agent, outcome="success",
                         passkey=row.id)
            return []
        db.delete(row)
        ended: list[EndedSession] = []
        if services.settings.passkey_removal_ends_sessions:
            ended = end_others_and_revoke_tokens(db, user_id, session_id, ip=ip, agent=agent,
                                                 reason="passkey.removed")
        record_audit(db, "passkey.removed", user_id=user_id, ip=ip, user_agent=agent, outcome="success",
                     passkey=passkey_id, sessions_ended=len(ended),
                     refresh_tokens_revoked=bool(services.settings.passkey_removal_ends_sessions))
        return ended
