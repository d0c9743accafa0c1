"""Rendering hosted pages: Jinja2 (autoescaped) with the CSRF token of this browser, and
the cookie that token is bound to."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from idp.observability.request_ids import current_request_id
from idp.oidc.origins import origin_of
from idp.resources import resource_dir
from idp.security import csrf
from idp.web import cookies

if TYPE_CHECKING:
    from jinja2 import Environment

_template_dirs = [str(resource_dir("templates"))]


@functools.cache
def _environment() -> Environment:
    """Made by the first page rendered: a worker that only ever answers the machine
    endpoints keeps Jinja2 out of its memory (issue 19's idle RSS)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    return Environment(loader=FileSystemLoader(_template_dirs), autoescape=select_autoescape(["html"]))


def add_template_dir(path: str) -> None:
    """A login step registered from outside idp brings its template (searched after idp's
    own, so it can never replace one of them)."""
    if path not in _template_dirs:
        _template_dirs.append(path)
        if _environment.cache_info().currsize:  # already made: its loader copied the list
            _environment().loader.searchpath.append(path)  # type: ignore[union-attr]


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


def render(
    request: Request,
    template: str,
    *,
    status: int = 200,
    form_targets: tuple[str, ...] = (),
    image_origins: tuple[str, ...] = (),
    self_form_action: bool = True,
    **context: Any,
) -> Response:
    services = request.app.state.services
    cookie = csrf_cookie_of(request)
    context.update(
        csrf_field=csrf.FIELD_NAME, csrf_token=csrf.csrf_token_for(services.keyring, cookie), request=request
    )
    html = _environment().get_template(template).render(**context)
    response = HTMLResponse(html, status_code=status)
    # browsers apply form-action to every redirect after a form POST: a page whose form can end
    # at an RP (login steps, consent, logout confirmation) passes that RP's redirect_source
    response.headers["content-security-policy"] = build_csp(form_targets, image_origins, self_form_action)
    if getattr(request.state, "new_csrf_cookie", None):
        cookies.put(response, request, cookies.CSRF, cookie)
    return response


_PRIVATE_USE_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*\.[a-z0-9+.-]+")  # RFC 8252 §7.1: com.example.app


def redirect_source(uri: str | None) -> tuple[str, ...]:
    """The CSP source that lets a form's redirect chain end at `uri` (an RP's verified
    redirect or post-logout URI): exactly its origin (scheme, host and actual port), or for
    a native app its private-use scheme; nothing for anything that is not plainly one."""
    scheme = urlsplit(uri or "").scheme.lower()
    if _PRIVATE_USE_SCHEME.fullmatch(scheme):
        return (f"{scheme}:",)
    origin = origin_of(uri)
    return (origin,) if origin else ()


def build_csp(
    form_targets: tuple[str, ...] = (), image_origins: tuple[str, ...] = (), self_form_action: bool = True
) -> str:
    """`image_origins`: exactly the origins of images a page shows from elsewhere (an RP's
    registered https logo on the consent page); `self_form_action` False: the page's forms
    may go to `form_targets` only (the form_post page)."""
    form_action = " ".join((("'self'",) if self_form_action else ()) + form_targets) or "'none'"
    img_src = " ".join(("'self'", "data:") + image_origins)
    return (
        f"default-src 'none'; style-src 'self'; img-src {img_src}; script-src 'self'; connect-src 'self'; "
        f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    )


@dataclass(frozen=True)
class NextAction:
    """What an error page tells the user to do next, and the link that does it."""

    advice: str
    label: str
    href: str


_ACCOUNT_NEXT = NextAction("Go back to your account page and try again.", "Back to your account", "/account")
_LOGOUT_NEXT = NextAction(
    "Go back to the application you came from, or sign out from idp's home page.", "Go to idp's home page", "/"
)
_SIGN_IN_NEXT = NextAction(
    "Go back to the application you came from and start signing in again from there.", "Go to idp's home page", "/"
)


def next_action(path: str) -> NextAction:
    """The way out of an error page, by the part of idp it happened in."""
    if path == "/account" or path.startswith("/account/"):
        return _ACCOUNT_NEXT
    return _LOGOUT_NEXT if path == "/logout" else _SIGN_IN_NEXT


def error_page(request: Request, status: int, message: str, *, return_to: str | None = None) -> Response:
    """What went wrong, what to do about it, and the request id to quote. `return_to` is a
    full URL to the RP (its verified redirect URI carrying `error`, `state` and `iss`, built
    by the caller): then the page's only button goes there. It is a link, not a form, so the
    page's CSP needs no form-action for it."""
    if return_to is not None and not redirect_source(return_to):
        raise ValueError("return_to must be an RP's verified http(s) or private-use-scheme redirect URI")
    response = render(
        request,
        "error.html",
        status=status,
        message=message,
        return_to=return_to,
        next_action=next_action(request.url.path),
        request_id=current_request_id.get(),
    )
    response.headers.update({"cache-control": "no-store", "pragma": "no-cache"})
    return response


def not_allowed_page(request: Request, client_name: str, return_to: str) -> Response:
    """The account is known and may not use this app (its allowed_groups): a 403 that says
    which app, and whose only button returns access_denied to it."""
    return error_page(
        request,
        403,
        f"Your account may not use {client_name}. If you think it should, ask an administrator.",
        return_to=return_to,
    )


def copy_cookies(source: Response, target: Response) -> Response:
    """The cookies `source` sets, set by `target` too (a page or JSON answer shown instead
    of the redirect that would have carried them)."""
    target.raw_headers.extend((name, value) for name, value in source.raw_headers if name == b"set-cookie")
    return target
