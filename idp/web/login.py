"""The hosted login page: the password step of the login chain. Every failure (unknown
user, wrong password, disabled or locked account) gets the same page, status and message;
rate limits run before Argon2, lockout after it (so a locked account costs the same time)."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from idp.db.models import User
from idp.login import transaction as tx_store
from idp.login.lockout import FailureRecord
from idp.login.steps import password as password_step
from idp.audit.trail import record_audit
from idp.web import login_binding
from idp.web.authorize import load_step_transaction, redirect_origin
from idp.web.blocking import run_blocking
from idp.web.chain import LOCKED, advance
from idp.web.forms import read_form
from idp.web.oauth_endpoints import NO_STORE, request_ip, services_of
from idp.web.pages import render
from idp.web.services import Services
from idp.web.throttle import (
    check_limits,
    credential_checks,
    record_failed_check,
    too_many_page,
)


async def show_login(request: Request) -> Response:
    tx_id = request.query_params.get("tx")
    tx = None if tx_id is None else await load_step_transaction(request, tx_id)
    if isinstance(tx, Response):
        return tx
    return login_page(request, tx, username=tx.login_hint if tx else "", error=None, status=200)


def login_page(request: Request, tx: tx_store.LoginTransaction | None, *, username: str | None, error: str | None, status: int) -> Response:
    response = render(request, "login.html", status=status, tx=tx, username=username or "", error=error,
                      client_name=tx.client_name if tx else None, form_targets=redirect_origin(tx.params) if tx else ())
    response.headers.update(NO_STORE)
    return response


async def submit_login(request: Request) -> Response:
    services = services_of(request)
    params = await read_form(request)
    if isinstance(params, Response):
        return params
    tx = None if "tx" not in params else await load_step_transaction(request, params["tx"])
    if isinstance(tx, Response):
        return tx
    username, password = params.get("username", ""), params.get("password", "")
    if not username or not password:
        return login_page(request, tx, username=username[:128], error="Enter your username and password.", status=400)

    ip = request_ip(request)
    agent = request.headers.get("user-agent")
    name = password_step.normalize_username(username)[:128]
    # Limits before any expensive work: a refused attempt costs no Argon2 and counts nowhere.
    verdict = await check_limits(request, credential_checks(ip, name), ip=ip)
    if not verdict.allowed:
        return too_many_page(request, verdict)

    candidate = await run_blocking(request, _find_candidate, services, username)
    result = await password_step.verify_password_step(services.hashing, candidate, password)
    if tx is not None and isinstance(result, password_step.PasswordVerified) and not tx.accepts_user(result.user_id):
        # another user's right password on a transaction that already named its user: refused
        # exactly like a wrong password for that account (same page, status, counter), never merged
        result = password_step.PasswordFailed(user_id=result.user_id, reason="other_identity")
    if isinstance(result, password_step.PasswordFailed):
        failure = await run_blocking(request, _record_failure, services, result.user_id, name, ip, agent,
                                     result.reason)
        await record_failed_check(request, ip)
        return login_page(request, tx, username=username[:128], error=failure_message(services, failure), status=401)

    new_hash = await services.hashing.hash_async(password) if result.needs_rehash else None
    if not await run_blocking(request, _password_passed, services, result.user_id, new_hash, ip, agent):
        # locked: the right password is refused exactly like a bad one, and recorded as refused
        await record_failed_check(request, ip)
        return login_page(request, tx, username=username[:128], error=failure_message(services, LOCKED), status=401)
    # signing in to idp itself (no parked request): the chain still needs somewhere to keep its state
    # (a re-authentication renews this browser's session at the chain's end: chain._finish)
    chain_tx = tx or tx_store.new_transaction({}, "", "", None, return_to="/account",
                                              browser=login_binding.for_new_transaction(request))
    outcome = await advance(request, chain_tx.with_step("pwd", user_id=result.user_id, username=name))
    if isinstance(outcome, FailureRecord):  # locked: refused exactly like a bad password
        await run_blocking(request, _record_refusal, services, result.user_id, ip, agent)
        await record_failed_check(request, ip)
        return login_page(request, tx, username=username[:128], error=failure_message(services, outcome), status=401)
    return login_binding.attach(request, outcome)


def failure_message(services: Services, failure: FailureRecord, words: str = password_step.FAILED_MESSAGE) -> str:
    """The same words for unknown, wrong and locked: only the counter's arithmetic speaks,
    and unknown names have the same arithmetic (phantom counters). Later steps pass their
    own `words` (a code, not a password, was wrong)."""
    minutes = max(1, services.lockout.seconds // 60)
    if failure.locked_now:
        return f"{words} Too many failed attempts: sign-in for this account is paused for {minutes} minutes."
    if failure.warn:
        left = f"{failure.remaining} attempt{'s' if failure.remaining != 1 else ''}"
        return f"{words} {left} left before sign-in is paused for {minutes} minutes."
    return words


def _find_candidate(services: Services, username: str) -> tuple[int, str | None, bool] | None:
    with services.sessions() as db:
        return password_step.find_login_candidate(db, username)


def _record_failure(services: Services, user_id: int | None, name: str, ip: str | None,
                    agent: str | None, reason: str | None = None) -> FailureRecord:
    with services.sessions.begin() as db:
        if user_id is None:
            failure = services.lockout.record_phantom_failure(services.keyring.digest("lockout-name:" + name))
        else:
            failure = services.lockout.record_failure(db, user_id)
        record_audit(db, "login.password.failed", user_id=user_id, ip=ip, user_agent=agent,
                     outcome="refused" if failure.was_locked else "failure", known_user=user_id is not None,
                     **({"reason": reason} if reason else {}))
        if failure.locked_now:
            record_audit(db, "account.locked", user_id=user_id, ip=ip, user_agent=agent, outcome="success",
                         known_user=user_id is not None, seconds=services.lockout.seconds)
        return failure


def _password_passed(services: Services, user_id: int, new_hash: str | None, ip: str | None,
                     agent: str | None) -> bool:
    """The password step's own record (the chain's end writes login.succeeded), and the
    hash upgrade when the Argon2 parameters changed; False, with a refusal recorded instead,
    when the account is locked (the chain checks again, for a lock taken after this)."""
    with services.sessions.begin() as db:
        if services.lockout.is_locked(db, user_id):
            _audit_refusal(db, user_id, ip, agent)
            return False
        record_audit(db, "login.password.succeeded", user_id=user_id, ip=ip, user_agent=agent, outcome="success")
        if new_hash:
            user = db.get(User, user_id)
            if user is not None:
                user.password_hash = new_hash
        return True


def _record_refusal(services: Services, user_id: int, ip: str | None, agent: str | None) -> None:
    with services.sessions.begin() as db:
        _audit_refusal(db, user_id, ip, agent)


def _audit_refusal(db, user_id: int, ip: str | None, agent: str | None) -> None:  # type: ignore[no-untyped-def]
    record_audit(db, "login.password.failed", user_id=user_id, ip=ip, user_agent=agent, outcome="refused",
                 known_user=True, reason="locked")
