"""The login chain's steps after the password: the code step (a TOTP code, or a backup
code instead) and the enrolment an admin or a client's default_acr_values can demand.
Both run only for a transaction whose password step (or step-up session) named the user,
count failures toward the shared lockout, and are rate-limited like the password step."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from idp.login import policy
from idp.login import transaction as tx_store
from idp.login.lockout import FailureRecord
from idp.mfa import backup_codes
from idp.mfa.factors import CodeCheck
from idp.audit.trail import record_audit
from idp.web.authorize import load_step_transaction, redirect_origin
from idp.web.blocking import run_blocking
from idp.web.chain import advance, chain_state
from idp.web.forms import read_form
from idp.web.login import failure_message
from idp.web.oauth_endpoints import NO_STORE, request_ip, services_of
from idp.web.pages import copy_cookies, error_page, render
from idp.web.services import Services
from idp.web.throttle import (
    check_limits,
    credential_checks,
    record_failed_check,
    too_many_page,
)

NOT_STARTED = "Start by signing in with your username and password."


async def _chain_tx(request: Request, tx_id: str | None) -> tx_store.LoginTransaction | Response:
    tx = await load_step_transaction(request, tx_id)
    if isinstance(tx, Response):
        return tx
    if tx.user_id is None or "pwd" not in tx.steps_done:
        return error_page(request, 400, NOT_STARTED)
    return tx


def _page(request: Request, template: str, tx: tx_store.LoginTransaction, *, status: int = 200, **context: object) -> Response:
    response = render(request, template, status=status, tx=tx, client_name=tx.client_name or None,
                      form_targets=redirect_origin(tx.params), **context)
    response.headers.update(NO_STORE)
    return response


# ---- the code step ------------------------------------------------------------------------

async def show_code_step(request: Request) -> Response:
    tx = await _chain_tx(request, request.query_params.get("tx"))
    if isinstance(tx, Response):
        return tx
    state = await run_blocking(request, chain_state, services_of(request), tx)
    if state.next_step in (policy.ENROL_TOTP, policy.PASSKEY):
        target = "/login/enrol" if state.next_step == policy.ENROL_TOTP else "/login/passkey"
        return RedirectResponse(f"{target}?tx={tx.id}", status_code=303, headers=NO_STORE)
    if state.next_step != policy.CODE:
        return error_page(request, 400, NOT_STARTED)
    backup = request.query_params.get("method") == "backup"
    return _page(request, "login_code.html", tx, backup=backup, error=None, offer_passkey=state.factors.passkeys > 0)


async def submit_code_step(request: Request) -> Response:
    services = services_of(request)
    params = await read_form(request)
    if isinstance(params, Response):
        return params
    tx = await _chain_tx(request, params.get("tx"))
    if isinstance(tx, Response):
        return tx
    backup = "backup_code" in params
    typed = params.get("backup_code" if backup else "code", "")
    if not typed.strip():
        return _page(request, "login_code.html", tx, backup=backup, status=400,
                     error="Enter the backup code." if backup else "Enter the code from your authenticator app.")
    ip = request_ip(request)
    verdict = await check_limits(request, credential_checks(ip, tx.username or f"#{tx.user_id}"), ip=ip)
    if not verdict.allowed:
        return too_many_page(request, verdict)

    assert tx.user_id is not None
    if backup:
        found = await run_blocking(request, _backup_code_hash, services, tx.user_id, typed)
        # one Argon2 verification per attempt, and one even when no code matched
        verified = await services.hashing.verify_async(found[1] if found else None,
                                                       backup_codes.normalize(typed) or typed)
        check = await run_blocking(request, _use_backup_code, services, tx.user_id, found[0] if found else None,
                                   verified, ip, request.headers.get("user-agent"))
    else:
        check = await run_blocking(request, _check_totp, services, tx.user_id, typed, ip,
                                   request.headers.get("user-agent"))
    if not check.ok:
        assert check.failure is not None
        await record_failed_check(request, ip)
        return _page(request, "login_code.html", tx, backup=backup, status=401,
                     error=_code_failure_message(services, check.failure, backup))
    outcome = await advance(request, tx.with_step("otp"))
    if isinstance(outcome, FailureRecord):
        await record_failed_check(request, ip)
        return _page(request, "login_code.html", tx, backup=backup, status=401,
                     error=_code_failure_message(services, outcome, backup))
    if backup:
        left = await run_blocking(request, _backup_codes_left, services, tx.user_id)
        return _interstitial(request, "backup_used.html", outcome, left=left, warn=left <= backup_codes.WARN_AT)
    return outcome


def _code_failure_message(services: Services, failure: FailureRecord, backup: bool) -> str:
    words = "That backup code is not valid or was already used." if backup else "That code is not valid."
    return failure_message(services, failure, words)


def _check_totp(services: Services, user_id: int, typed: str, ip: str | None, agent: str | None) -> CodeCheck:
    with services.sessions.begin() as db:
        check = services.factors.check_totp(db, user_id, typed)
        _audit_code(db, "login.totp", user_id, check, ip, agent)
        return check


def _backup_code_hash(services: Services, user_id: int, typed: str) -> tuple[int, str] | None:
    with services.sessions() as db:
        return services.factors.backup_code_hash(db, user_id, typed)


def _use_backup_code(services: Services, user_id: int, code_id: int | None, verified: bool, ip: str | None,
                     agent: str | None) -> CodeCheck:
    with services.sessions.begin() as db:
        check = services.factors.use_backup_code(db, user_id, code_id, verified)
        _audit_code(db, "login.backup_code", user_id, check, ip, agent)
        return check


def _backup_codes_left(services: Services, user_id: int) -> int:
    with services.sessions() as db:
        return services.factors.backup_codes_left(db, user_id)


def _audit_code(db, kind: str, user_id: int, check: CodeCheck, ip: str | None, agent: str | None) -> None:  # type: ignore[no-untyped-def]
    outcome = "success" if check.ok else ("refused" if check.failure and check.failure.was_locked else "failure")
    record_audit(db, f"{kind}.{'succeeded' if check.ok else 'failed'}", user_id=user_id, ip=ip, user_agent=agent,
                 outcome=outcome)
    if check.failure is not None and check.failure.locked_now:
        record_audit(db, "account.locked", user_id=user_id, ip=ip, user_agent=agent, outcome="success",
                     known_user=True)


def _interstitial(request: Request, template: str, outcome: Response, **context: object) -> Response:
    """A page shown once between a step and the rest of the chain (backup codes left, new
    backup codes): its Continue link goes where the chain was going, with the same cookies.
    An outcome that goes nowhere (an error page) is shown as it is."""
    if "location" not in outcome.headers:
        return outcome
    response = render(request, template, continue_url=outcome.headers["location"], **context)
    response.headers.update(NO_STORE)
    return copy_cookies(outcome, response)


# ---- a passkey as the next step -------------------------------------------------------------

async def show_passkey_step(request: Request) -> Response:
    """After a password (or for a step-up to phr): the page whose button runs the passkey
    ceremony for this user (idp/static/passkeys.js)."""
    tx = await _chain_tx(request, request.query_params.get("tx"))
    if isinstance(tx, Response):
        return tx
    state = await run_blocking(request, chain_state, services_of(request), tx)
    # the passkey step proper, or a passkey chosen instead of a code (it satisfies mfa too)
    if not (state.next_step == policy.PASSKEY or (state.next_step == policy.CODE and state.factors.passkeys)):
        return error_page(request, 400, NOT_STARTED)
    return _page(request, "login_passkey.html", tx, offer_code=state.next_step == policy.CODE, error=None)


# ---- enrolment demanded at login -----------------------------------------------------------

async def show_enrolment(request: Request) -> Response:
    services = services_of(request)
    tx = await _chain_tx(request, request.query_params.get("tx"))
    if isinstance(tx, Response):
        return tx
    state = await run_blocking(request, chain_state, services, tx)
    if state.next_step != policy.ENROL_TOTP:
        return error_page(request, 400, NOT_STARTED)
    secret, username = await run_blocking(request, _pending_or_new_secret, services, tx.user_id)
    return _enrolment_page(request, tx, secret, username, error=None, status=200)


def _enrolment_page(request: Request, tx: tx_store.LoginTransaction, secret: str, username: str, *, error: str | None,
                    status: int) -> Response:
    services = services_of(request)
    _, qr = services.factors.provisioning(secret, username)
    from idp.mfa import totp

    return _page(request, "login_enrol.html", tx, status=status, secret=secret, secret_grouped=totp.grouped(secret),
                 qr_data_uri=qr, form_action="/login/enrol", hidden={"tx": tx.id}, error=error)


def _pending_or_new_secret(services: Services, user_id: int | None) -> tuple[str, str]:
    from idp.db.models import User

    assert user_id is not None
    with services.sessions.begin() as db:
        user = db.get(User, user_id)
        assert user is not None
        secret = services.factors.pending_secret(db, user_id) or services.factors.begin_totp(db, user_id)
        return secret, user.username


async def submit_enrolment(request: Request) -> Response:
    services = services_of(request)
    params = await read_form(request)
    if isinstance(params, Response):
        return params
    tx = await _chain_tx(request, params.get("tx"))
    if isinstance(tx, Response):
        return tx
    assert tx.user_id is not None
    state = await run_blocking(request, chain_state, services, tx)
    if state.next_step != policy.ENROL_TOTP:
        return error_page(request, 400, NOT_STARTED)
    ip = request_ip(request)
    verdict = await check_limits(request, credential_checks(ip, tx.username or f"#{tx.user_id}"), ip=ip)
    if not verdict.allowed:
        return too_many_page(request, verdict)
    agent = request.headers.get("user-agent")
    check = await run_blocking(request, _confirm_enrolment, services, tx.user_id, params.get("code", ""), ip, agent)
    if not check.ok:
        assert check.failure is not None
        await record_failed_check(request, ip)
        secret, username = await run_blocking(request, _pending_or_new_secret, services, tx.user_id)
        message = failure_message(services, check.failure, "That code is not valid.")
        return _enrolment_page(request, tx, secret, username, error=message, status=401)
    # the ten Argon2 hashes only once the code is right: a wrong code must not cost ten hashes
    codes = backup_codes.generate()
    hashed = [(code, await services.hashing.hash_async(code)) for code in codes]
    await run_blocking(request, _store_backup_codes, services, tx.user_id, hashed)
    outcome = await advance(request, tx.with_step("otp"))
    if isinstance(outcome, FailureRecord):
        await record_failed_check(request, ip)
        return error_page(request, 401, "The sign-in could not be completed. Start again.")
    return _interstitial(request, "backup_codes.html", outcome, codes=codes)


def _confirm_enrolment(services: Services, user_id: int, typed: str, ip: str | None, agent: str | None) -> CodeCheck:
    with services.sessions.begin() as db:
        check = services.factors.confirm_totp(db, user_id, typed)
        _audit_code(db, "mfa.enrolment", user_id, check, ip, agent)
        if check.ok:
            record_audit(db, "mfa.totp.enabled", user_id=user_id, ip=ip, user_agent=agent, outcome="success",
                         during="login")
        return check


def _store_backup_codes(services: Services, user_id: int, hashed: list[tuple[str, str]]) -> None:
    with services.sessions.begin() as db:
        services.factors.replace_backup_codes(db, user_id, hashed)
