"""CSRF protection for every form: a random per-browser cookie and, in each form, an HMAC of
it under a derived key (signed double submit). Compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from idp.security.keyring import Keyring, new_secret

FIELD_NAME = "csrf_token"


def new_csrf_cookie() -> str:
    return new_secret(24)


def csrf_token_for(keyring: Keyring, cookie: str) -> str:
    return hmac.new(keyring.derive("csrf:v1"), cookie.encode(), hashlib.sha256).hexdigest()


def check_csrf(keyring: Keyring, cookie: str | None, submitted: object) -> bool:
    if not cookie or not isinstance(submitted, str) or len(cookie) > 100 or len(submitted) != 64:
        return False
    return hmac.compare_digest(csrf_token_for(keyring, cookie), submitted)
