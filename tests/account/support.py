"""Helpers the /account tests share: signing in with the password and then a TOTP code,
following the login chain wherever it sends the browser (the step's own form, its action
and hidden fields read from the page, never a hard-coded step URL)."""

from __future__ import annotations

import re

import pyotp
from starlette.testclient import TestClient

from tests.support.rp import form_value
from tests.support.seed import PASSWORD

_FORM = re.compile(r"<form\b[^>]*>.*?</form>", re.DOTALL)
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


def sign_in_with_code(client: TestClient, secret: str, at: float, username: str = "alice") -> None:
    """The password, then the TOTP code for time `at`: the browser's session reaches mfa
    (a new session, or this browser's own renewed) and the chain lands on /account."""
    csrf = form_value(client.get("/login").text, "csrf_token")
    response = client.post(
        "/login", data={"csrf_token": csrf, "username": username, "password": PASSWORD}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    page = client.get(response.headers["location"])
    form = next((f for f in _FORM.findall(page.text) if 'name="code"' in f), None)
    assert form is not None, f"no code step at {response.headers['location']}: {page.text[:300]}"
    action = re.search(r'action="([^"]+)"', form)
    assert action, form
    data = dict(_HIDDEN.findall(form)) | {"code": pyotp.TOTP(secret).at(at)}
    response = client.post(action.group(1), data=data, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/account", response.text
