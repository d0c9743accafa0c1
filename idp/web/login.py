"""The hosted login page: the password step of the login chain. Every failure (unknown
user, wrong password, disabled or locked account) gets the same page, status and message;
rate limits run before Argon2, lockout after it (so a locked account costs the same time)."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from idp.db.models import User
from idp.login import transaction as tx_store
from idp.login.lockout import FailureRecord
from idp.login.sessions import COOKIE_NAME as SESSION_COOKIE
from idp.login.sessions import start_session
from idp.login.steps import password as password_step
from idp.security.audit import record_audit
from idp.web.authorize import load_transaction
from idp.web.blocking import run_blocking
from idp.web.forms import read_form
from idp.web.oauth_endpoints import NO_STORE, request_ip, services_of
from idp.web.pages import render, set_cookie
from idp.web.services import Services
from idp.web.throttle import check_limits, too_many_page


async def show_login(request: Request) -> Response:
    tx_id = request.query_params.get("tx")
    tx = None if tx_id is None else await load_transaction(request, tx_id)
    if isinstance(tx, Response):
        return tx
    return login_page(request, tx, username=tx.login_hint if tx else "", error=None, status=200)


def login_page(request: Request, tx: tx_store.LoginTransaction | None, *, username: str | None, error: str | None, status: int) -> Response:
    response = render(request, "login.html", status=status, tx=tx, username=username or "", error=error,
                      client_name=tx.client_name if tx else None)
    response.headers.update(NO_STORE)
    return response


async def submit_login(request: Request) -> Response:
    services = services_of(request)
    params = await read_form(request)
    if isinstance(params, Response):
        return params
    tx = None if "tx" not in params else await load_transaction(request, params["tx"])
    if isinstance(tx, Response):
        return tx
    username, password = params.get("username", ""), params.get("password", "")
    if not username or not password:
        return login_page(request, tx, username=username[:128], error="Enter your username and password.", status=400)

    ip = request_ip(request)
    agent = request.headers.get("user-agent")
    name = password_step.normalize_username(username)[:128]
    # Limits before any expensive work: a refused attempt costs no Argon2 and counts nowhere.
    verdict = await check_limits(request, [("login_ip", ip or "-"), ("login_account", name)], ip=ip)
    if not verdict.allowed:
        return too_many_page(request, verdict)

    candidate = await run_blocking(request, _find_candidate, services, username)
    result = await password_step.verify_password_step(services.hashing, candidate, password)
    if isinstance(result, password_step.PasswordVerified):
        new_hash = await services.hashing.hash_async(password) if result.needs_rehash else None
        signed_in = await run_blocking(request, _sign_in, services, result.user_id, new_hash, request, ip)
        if signed_in is not None:
            return await _continue(request, tx, *signed_in)
        failure = FailureRecord(remaining=0, locked_now=False, was_locked=True)  # locked: refused like a bad password
    else:
        failure = await run_blocking(request, _record_failure, services, result.user_id, name, ip, agent)
    return login_page(request, tx, username=username[:128], error=failure_message(services, failure), status=401)


def failure_message(services: Services, failure: FailureRecord) -> str:
    """The same words for unknown, wrong and locked: only the counter's arithmetic speaks,
    and unknown names have the same arithmetic (phantom counters)."""
    minutes = max(1, services.lockout.seconds // 60)
    if failure.locked_now:
        return (f"{password_step.FAILED_MESSAGE} Too many failed attempts: sign-in for this account is paused "
                f"for {minutes} minutes.")
    if failure.warn:
        left = f"{failure.remaining} attempt{'s' if failure.remaining != 1 else ''}"
        return f"{password_step.FAILED_MESSAGE} {left} left before sign-in is paused for {minutes} minutes."
    return password_step.FAILED_MESSAGE


async def _continue(request: Request, tx: tx_store.LoginTransaction | None, cookie: str, sid: str) -> Response:
    services = services_of(request)
    if tx is not None:
        await run_blocking(request, tx_store.save_transaction, services.store, tx.finished_by(sid),
                           ttl_seconds=services.settings.login_ttl_seconds)
        target = f"/authorize/resume?tx={tx.id}"
    else:
        target = "/"
    response = RedirectResponse(target, status_code=303, headers=NO_STORE)
    set_cookie(response, request, SESSION_COOKIE, cookie, max_age=None)
    return response


def _find_candidate(services: Services, username: str) -> tuple[int, str | None, bool] | None:
    with services.sessions() as db:
        return password_step.find_login_candidate(db, username)


def _record_failure(services: Services, user_id: int | None, name: str, ip: str | None,
                    agent: str | None) -> FailureRecord:
    with services.sessions.begin() as db:
        if user_id is None:
            failure = services.lockout.record_phantom_failure(services.keyring.digest("lockout-name:" + name))
        else:
            failure = services.lockout.record_failure(db, user_id)
        record_audit(db, "login.password.failed", user_id=user_id, ip=ip, user_agent=agent,
                     outcome="refused" if failure.was_locked else "failure", known_user=user_id is not None)
        if failure.locked_now:
            record_audit(db, "account.locked", user_id=user_id, ip=ip, user_agent=agent, outcome="success",
                         known_user=user_id is not None, seconds=services.lockout.seconds)
        return failure


def _sign_in(services: Services, user_id: int, new_hash: str | None, request: Request,
             ip: str | None) -> tuple[str, str] | None:
    """A session for the user, unless the account is locked (then nothing is written but
    the audit row): the lock check and the counter reset are one conditional UPDATE."""
    agent = request.headers.get("user-agent")
    with services.sessions.begin() as db:
        if not services.lockout.record_success(db, user_id):
            record_audit(db, "login.password.failed", user_id=user_id, ip=ip, user_agent=agent, outcome="refused",
                         known_user=True, reason="locked")
            return None
        user = db.get(User, user_id)
        assert user is not None
        if new_hash:
            user.password_hash = new_hash
        cookie, row = start_session(
            db, services.keyring, services.session_policy, user, acr="pwd", amr=list(password_step.AMR),
            user_agent=agent, ip=ip,
        )
        record_audit(db, "login.password.succeeded", user_id=user.id, ip=ip, user_agent=agent, outcome="success")
        return cookie, row.sid
