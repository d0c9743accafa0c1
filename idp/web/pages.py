"""Rendering hosted pages: Jinja2 (autoescaped) with the CSRF token of this browser, and
the cookie that token is bound to."""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from idp.resources import resource_dir
from idp.security import csrf
from idp.web import cookies

_env = Environment(loader=FileSystemLoader(str(resource_dir("templates"))), autoescape=select_autoescape(["html"]))


def csrf_cookie_of(request: Request) -> str:
    """This browser's CSRF cookie, minted once per browser and kept on request.state."""
    existing = getattr(request.state, "csrf_cookie", None) or cookies.read(request, cookies.CSRF)
    if not existing:
        existing = csrf.new_csrf_cookie()
        request.state.new_csrf_cookie = existing
    request.state.csrf_cookie = existing
    return existing


def check_form_csrf(request: Request, params: dict[str, str]) -> bool:
    services = request.app.state.services
    return csrf.check_csrf(services.keyring, cookies.read(request, cookies.CSRF), params.get(csrf.FIELD_NAME))


def render(request: Request, template: str, *, status: int = 200, form_targets: tuple[str, ...] = (), **context: Any) -> Response:
    services = request.app.state.services
    cookie = csrf_cookie_of(request)
    context.update(csrf_field=csrf.FIELD_NAME, csrf_token=csrf.csrf_token_for(services.keyring, cookie), request=request)
    html = _env.get_template(template).render(**context)
    response = HTMLResponse(html, status_code=status)
    # browsers apply form-action to every redirect after a form POST: a page whose form can end
    # at an RP (login steps, consent, logout confirmation) passes that RP's redirect_source
    response.headers["content-security-policy"] = build_csp(form_targets)
    if getattr(request.state, "new_csrf_cookie", None):
        cookies.put(response, request, cookies.CSRF, cookie)
    return response


_HOST = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")
_PRIVATE_USE_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*\.[a-z0-9+.-]+")  # RFC 8252 §7.1: com.example.app
_DEFAULT_PORTS = {"http": 80, "https": 443}


def redirect_source(uri: str | None) -> tuple[str, ...]:
    """The CSP source that lets a form's redirect chain end at `uri` (an RP's verified
    redirect or post-logout URI): exactly its scheme, host and actual port, or for a native
    app its private-use scheme; nothing for anything that is not plainly one of those."""
    try:
        parts = urlsplit(uri or "")
        port = parts.port
    except ValueError:
        return ()
    scheme = parts.scheme.lower()
    if _PRIVATE_USE_SCHEME.fullmatch(scheme):
        return (f"{scheme}:",)
    host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    if scheme not in _DEFAULT_PORTS or not _HOST.fullmatch(host):
        return ()
    return (f"{scheme}://{host.lower()}" + (f":{port}" if port not in (None, _DEFAULT_PORTS[scheme]) else ""),)


def build_csp(form_targets: tuple[str, ...] = ()) -> str:
    form_action = " ".join(("'self'",) + form_targets)
    return (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; connect-src 'self'; "
        f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    )


def error_page(request: Request, status: int, message: str) -> Response:
    response = render(request, "error.html", status=status, message=message)
    response.headers.update({"cache-control": "no-store", "pragma": "no-cache"})
    return response


def copy_cookies(source: Response, target: Response) -> Response:
    """The cookies `source` sets, set by `target` too (a page or JSON answer shown instead
    of the redirect that would have carried them)."""
    target.raw_headers.extend((name, value) for name, value in source.raw_headers if name == b"set-cookie")
    return target
