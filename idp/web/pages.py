"""Rendering hosted pages: Jinja2 (autoescaped) with the CSRF token of this browser, and
the cookie that token is bound to."""
from __future__ import annotations

from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from idp.resources import resource_dir
from idp.security import csrf

_env = Environment(loader=FileSystemLoader(str(resource_dir("templates"))), autoescape=select_autoescape(["html"]))


def csrf_cookie_of(request: Request) -> str:
    """This browser's CSRF cookie, minted once per browser and kept on request.state."""
    existing = getattr(request.state, "csrf_cookie", None) or request.cookies.get(csrf.COOKIE_NAME)
    if not existing or len(existing) > 100:
        existing = csrf.new_csrf_cookie()
        request.state.new_csrf_cookie = existing
    request.state.csrf_cookie = existing
    return existing


def check_form_csrf(request: Request, params: dict[str, str]) -> bool:
    services = request.app.state.services
    return csrf.check_csrf(services.keyring, request.cookies.get(csrf.COOKIE_NAME), params.get(csrf.FIELD_NAME))


def render(request: Request, template: str, *, status: int = 200, form_targets: tuple[str, ...] = (), **context: Any) -> Response:
    services = request.app.state.services
    cookie = csrf_cookie_of(request)
    context.update(csrf_field=csrf.FIELD_NAME, csrf_token=csrf.csrf_token_for(services.keyring, cookie), request=request)
    html = _env.get_template(template).render(**context)
    response = HTMLResponse(html, status_code=status)
    # form-action also governs the redirect after a POST: allow the client's redirect origin
    response.headers["content-security-policy"] = build_csp(form_targets)
    if getattr(request.state, "new_csrf_cookie", None):
        set_cookie(response, request, csrf.COOKIE_NAME, cookie, max_age=None)
    return response


def build_csp(form_targets: tuple[str, ...] = ()) -> str:
    form_action = " ".join(("'self'",) + form_targets)
    return (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; connect-src 'self'; "
        f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    )


def set_cookie(response: Response, request: Request, name: str, value: str, *, max_age: int | None) -> None:
    secure = request.app.state.services.settings.secure_cookies
    response.set_cookie(name, value, max_age=max_age, path="/", secure=secure, httponly=True, samesite="lax")


def error_page(request: Request, status: int, message: str) -> Response:
    response = render(request, "error.html", status=status, message=message)
    response.headers.update({"cache-control": "no-store", "pragma": "no-cache"})
    return response


def copy_cookies(source: Response, target: Response) -> Response:
    """The cookies `source` sets, set by `target` too (a page or JSON answer shown instead
    of the redirect that would have carried them)."""
    target.raw_headers.extend((name, value) for name, value in source.raw_headers if name == b"set-cookie")
    return target
