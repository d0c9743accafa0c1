"""/logout: RP-Initiated Logout 1.0 (the discovery document's end_session_endpoint), and
signing out from idp's own pages. A request tied to the browser's session by its
id_token_hint (same sid, or same subject) signs out at once; anything else asks the user
to confirm, so a third-party page cannot sign people out by embedding a link."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from idp.audit.trail import record_audit
from idp.login.sessions import find_session
from idp.oidc.logout import Hint, InvalidHint, allowed_redirect, check_hint, end_session
from idp.web import backchannel, cookies
from idp.web.blocking import run_blocking
from idp.web.forms import read_form
from idp.web.oauth_endpoints import NO_STORE, request_ip, services_of
from idp.web.pages import error_page, redirect_source, render
from idp.web.params import BadParameters, read_params
from idp.web.services import Services


async def end_session_endpoint(request: Request) -> Response:
    services = services_of(request)
    if request.method == "POST" and request.query_params.get("confirm") == "1":
        params = await read_form(request)  # the confirmation form: CSRF checked
        if isinstance(params, Response):
            return params
        return await _sign_out(request, params, confirmed=True)
    try:
        params = await read_params(request, max_bytes=services.settings.max_body_bytes)
    except BadParameters as exc:
        return error_page(request, 400, str(exc))
    return await _sign_out(request, params, confirmed=False)


async def _sign_out(request: Request, params: dict[str, str], *, confirmed: bool) -> Response:
    services = services_of(request)
    hint: Hint | None = None
    if params.get("id_token_hint"):
        try:
            hint = await run_blocking(request, check_hint, services.oidc, params["id_token_hint"])
        except InvalidHint as exc:
            return error_page(request, 400, str(exc))
    client_id = params.get("client_id") or (hint.client_id if hint else None)
    if hint is not None and params.get("client_id") and params["client_id"] != hint.client_id:
        return error_page(request, 400, "The client_id does not match the id_token_hint.")
    client = services.oidc.clients.get(client_id) if client_id else None
    if client_id and client is None:
        return error_page(request, 400, "Unknown client.")
    redirect = allowed_redirect(client, params.get("post_logout_redirect_uri"))
    state = params.get("state", "")[:2048] or None

    session = await run_blocking(request, _current_session, services, cookies.read(request, cookies.SESSION))
    tied = (
        session is not None
        and hint is not None
        and ((hint.sid is not None and hint.sid == session[1]) or (hint.sid is None and hint.sub == session[2]))
    )
    if session is not None and not (tied or confirmed):
        response = render(
            request,
            "logout_confirm.html",
            client_name=client.client_name if client else None,
            client_id=client_id or "",
            redirect=redirect or "",
            state=state or "",
            form_targets=redirect_source(redirect),
        )  # the confirmed POST ends there
        response.headers.update(NO_STORE)
        return response
    if session is not None:
        ended = await run_blocking(
            request, _end, services, session[0], request_ip(request), request.headers.get("user-agent"), client_id
        )
        if ended is not None:
            backchannel.schedule(services, ended)
    if redirect:
        target = redirect + ("&" if "?" in redirect else "?") + (f"state={_quote(state)}" if state else "")
        response: Response = RedirectResponse(target.rstrip("?&"), status_code=303, headers=NO_STORE)
    else:
        response = render(request, "logged_out.html", client_name=client.client_name if client else None)
        response.headers.update(NO_STORE)
    cookies.remove(response, request, cookies.SESSION)
    cookies.remove(response, request, cookies.LOGIN)  # and every sign-in in progress in this browser
    return response


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _current_session(services: Services, cookie: str | None) -> tuple[int, str, str] | None:
    """(session row id, sid, user's subject) of the browser's session, if any."""
    with services.sessions.begin() as db:
        found = find_session(db, services.keyring, services.session_policy, cookie)
        if found is None:
            return None
        row, user = found
        return row.id, row.sid, user.subject


def _end(services: Services, session_id: int, ip: str | None, agent: str | None, client_id: str | None):  # type: ignore[no-untyped-def]
    with services.sessions.begin() as db:
        ended = end_session(db, session_id)
        if ended is not None:
            record_audit(
                db,
                "logout",
                user_id=ended.user_id,
                client_id=client_id,
                ip=ip,
                user_agent=agent,
                outcome="success",
                sid=ended.sid,
                clients=list(ended.clients),
            )
        return ended
