"""The cookies idp sets in a browser, each under one name: `__Host-` prefixed when the
issuer is https (RFC 6265bis §4.1.3.2: Secure, Path=/ and no Domain, so neither a sibling
subdomain nor a plain-http page can plant or overwrite one), always HttpOnly and Lax."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

SESSION = "idp_session"  # the IdP session (idp/login/sessions.py)
CSRF = "idp_csrf"  # the signed double-submit secret (idp/security/csrf.py)
LOGIN = "idp_login"  # binds login transactions to this browser (idp/web/login_binding.py)

_HOST_PREFIX = "__Host-"
MAX_VALUE_LENGTH = 100  # ours are 32–43 characters; anything longer is not ours


def _secure(request: Request) -> bool:
    return bool(request.app.state.services.settings.secure_cookies)


def name(request: Request, base: str) -> str:
    return _HOST_PREFIX + base if _secure(request) else base


def read(request: Request, base: str) -> str | None:
    value = request.cookies.get(name(request, base))
    return value if value and len(value) <= MAX_VALUE_LENGTH else None


def put(response: Response, request: Request, base: str, value: str, *, max_age: int | None = None) -> None:
    response.set_cookie(
        name(request, base), value, max_age=max_age, path="/", secure=_secure(request), httponly=True, samesite="lax"
    )


def remove(response: Response, request: Request, base: str) -> None:
    response.delete_cookie(name(request, base), path="/", secure=_secure(request), httponly=True, samesite="lax")
