"""OAuth 2.0 Form Post Response Mode (issue 14): the response as an auto-submitted POST to
the redirect URI, errors delivered the same way, no-store, `iss` among the fields, a
<noscript> button, and a CSP whose form-action is exactly the RP's origin, no inline script."""

from __future__ import annotations

import re
from html import unescape

from tests.support.rp import AuthRequest, query_of, redeem, start, submit_login


def form_post_page(client, request: AuthRequest):  # type: ignore[no-untyped-def]
    submit_login(client, "/login")
    response = start(client, request)
    if response.headers.get("location", "").startswith("/consent"):
        from tests.support.rp import form_value

        page = client.get(response.headers["location"])
        response = client.post(
            "/consent",
            data={
                "csrf_token": form_value(page.text, "csrf_token"),
                "tx": form_value(page.text, "tx"),
                "decision": "allow",
            },
            follow_redirects=False,
        )
    return response


def fields_of(html: str) -> dict[str, str]:
    return {
        unescape(n): unescape(v) for n, v in re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', html)
    }


def test_the_code_is_posted_to_the_redirect_uri_with_state_and_iss(client):
    request = AuthRequest(extra={"response_mode": "form_post"})
    page = form_post_page(client, request)
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert re.search(r'<form method="post" action="https://shop.example/callback" data-form-post>', page.text)
    fields = fields_of(page.text)
    assert set(fields) == {"code", "state", "iss"} and fields["state"] == request.state
    assert fields["iss"] == "http://localhost:8000"
    assert "<noscript>" in page.text and '<script src="/static/form_post.js" defer></script>' in page.text
    csp = page.headers["content-security-policy"]
    assert "form-action https://shop.example;" in csp and "'unsafe-inline'" not in csp and "script-src 'self'" in csp
    assert redeem(client, request, fields["code"]).status_code == 200


def test_errors_are_posted_the_same_way(client):
    request = AuthRequest(extra={"response_mode": "form_post", "prompt": "none"})
    page = start(client, request)  # no session: login_required
    fields = fields_of(page.text)
    assert page.status_code == 200 and fields["error"] == "login_required" and fields["state"] == request.state


def test_an_unknown_response_mode_is_refused_in_the_query(client):
    location = start(client, AuthRequest(extra={"response_mode": "fragment"})).headers["location"]
    assert query_of(location)["error"] == "invalid_request"


def test_discovery_lists_form_post(client):
    assert client.get("/.well-known/openid-configuration").json()["response_modes_supported"] == ["query", "form_post"]
