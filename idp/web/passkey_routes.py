"""The passkey login step over JSON (called by idp/static/passkeys.js): usernameless,
username-first, or as the next step after a password / for a step-up."""
from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from idp.audit.trail import record_audit
from idp.login import transaction as tx_store
from idp.login.lockout import FailureRecord
from idp.login.steps.password import normalize_username
from idp.mfa.passkeys import PasskeyError, SignedIn
from idp.web import login_binding
from idp.web.blocking import run_blocking
from idp.web.chain import advance
from idp.web.json_bodies import json_error, read_json
from idp.web.login import failure_message
from idp.web.oauth_endpoints import NO_STORE, request_ip, services_of
from idp.web.pages import copy_cookies
from idp.web.services import Services
from idp.web.throttle import (
    check_limits,
    credential_checks,
    record_failed_check,
    too_many_json,
)

SIGN_IN_FAILED = "That passkey could not sign you in."
EXPIRED = "This sign-in has expired. Reload the page and try again."


async def sign_in_options(request: Request) -> Response:
    services = services_of(request)
    data = await read_json(request)
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
    data = await read_json(request)
    if isinstance(data, Response):
        return data
    tx = await _step_transaction(request, data.get("tx"))
    if tx is None:
        return json_error(400, EXPIRED)
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
        return json_error(401, failure_message(services, result, SIGN_IN_FAILED))
    if isinstance(result, str):
        return json_error(401, SIGN_IN_FAILED)
    chained = tx.with_step(result.methods[0], user_id=result.user_id)
    chained = chained.with_step(result.methods[1])
    outcome = await advance(request, chained)
    if isinstance(outcome, FailureRecord) or "location" not in outcome.headers:
        await record_failed_check(request, ip)
    if isinstance(outcome, FailureRecord):
        return json_error(401, failure_message(services, outcome, SIGN_IN_FAILED))
    if "location" not in outcome.headers:  # the chain ended without a way on (e.g. the account was disabled)
        return json_error(401, SIGN_IN_FAILED)
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
