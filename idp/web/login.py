"""The hosted login page: the password step of the login chain. Every failure (unknown
user, wrong password, disabled account) gets the same page, status and message."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from idp.db.models import User
from idp.login import transaction as tx_store
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

    candidate = await run_blocking(request, _find_candidate, services, username)
    result = await password_step.verify_password_step(services.hashing, candidate, password)
    ip = request_ip(request)
    if isinstance(result, password_step.PasswordFailed):
        await run_blocking(request, _record_failure, services, result.user_id, ip)
        return login_page(request, tx, username=username[:128], error=result.public_message, status=401)

    new_hash = await services.hashing.hash_async(password) if result.needs_rehash else None
    cookie, sid = await run_blocking(request, _sign_in, services, result.user_id, new_hash, request, ip)
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


def _record_failure(services: Services, user_id: int | None, ip: str | None) -> None:
    with services.sessions.begin() as db:
        record_audit(db, "login.password.failed", user_id=user_id, ip=ip)


def _sign_in(services: Services, user_id: int, new_hash: str | None, request: Request, ip: str | None) -> tuple[str, str]:
    with services.sessions.begin() as db:
        user = db.get(User, user_id)
        assert user is not None
        if new_hash:
            user.password_hash = new_hash
        cookie, row = start_session(
            db, services.keyring, services.session_policy, user, acr="pwd", amr=list(password_step.AMR),
            user_agent=request.headers.get("user-agent"), ip=ip,
        )
        record_audit(db, "login.password.succeeded", user_id=user.id, ip=ip)
        return cookie, row.sid
