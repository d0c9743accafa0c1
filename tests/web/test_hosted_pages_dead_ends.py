"""No dead ends on the hosted pages (issue 14, item 9): signing out from / and /account,
error pages that say what to do next and give the request id to quote (and, for a verified
redirect URI, one button back to the RP), focus on the field to retype after a failure, a
favicon, and WCAG 2.2 SC 1.4.11 non-text contrast (3:1) for input borders and the focus
ring, computed from the stylesheet itself."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path
from urllib.parse import parse_qs

import pyotp
import pytest
from sqlalchemy import select
from starlette.requests import Request
from starlette.testclient import TestClient

from idp.db.models import User
from idp.observability.request_ids import current_request_id
from idp.web.pages import error_page
from tests.support.clock import START
from tests.support.rp import AuthRequest, form_value, start, submit_login
from tests.support.seed import PASSWORD

CSS = Path(__file__).resolve().parents[2] / "idp" / "static" / "idp.css"
SIGN_OUT_FORM = re.compile(r'<form method="post" action="/logout\?confirm=1" class="sign-out">(.*?)</form>', re.DOTALL)
T0 = START.timestamp()  # the app's clock, a step boundary plus 20 s (tests/support/clock.py)


def signed_in(client: TestClient) -> None:
    """alice, signed in to idp itself (the login page without a parked request)."""
    response = submit_login(client, "/login")
    assert response.status_code == 303, response.text
    assert client.get(response.headers["location"]).status_code == 200


def sign_out_via_form(client: TestClient, page_html: str):  # type: ignore[no-untyped-def]
    form = SIGN_OUT_FORM.search(page_html)
    assert form, "no sign-out form on the page"
    assert re.search(r'<button type="submit"[^>]*>Sign out</button>', form.group(1))
    return client.post(
        "/logout?confirm=1", data={"csrf_token": form_value(form.group(1), "csrf_token")}, follow_redirects=False
    )


# ---- signing out ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/account"], ids=["from the home page", "from the account page"])
def test_sign_out_ends_the_session_and_lands_on_the_signed_out_page(client, path):
    signed_in(client)
    response = sign_out_via_form(client, client.get(path).text)
    assert response.status_code == 200
    assert "You are signed out" in response.text
    assert "idp_session" in response.headers.get("set-cookie", "")  # removed
    assert "You are not signed in" in client.get("/").text
    assert client.get("/account", follow_redirects=False).headers["location"] == "/login"


def test_the_home_page_offers_no_sign_out_to_a_signed_out_browser(client):
    page = client.get("/").text
    assert "You are not signed in" in page and not SIGN_OUT_FORM.search(page)


def test_sign_out_without_the_csrf_token_is_refused_and_the_session_kept(client):
    signed_in(client)
    response = client.post("/logout?confirm=1", data={"csrf_token": "0" * 64}, follow_redirects=False)
    assert response.status_code == 403
    assert "You are signed in as" in client.get("/").text


# ---- error pages -----------------------------------------------------------------------------------


def request_id_on(html: str) -> str:
    match = re.search(r'<code class="request-id-value">([^<]+)</code>', html)
    assert match, "no request id on the error page"
    return match.group(1)


def buttons_on(html: str) -> list[str]:
    """Every control that looks like a button: <button>s and links styled as one."""
    return re.findall(r"<button\b[^>]*>.*?</button>|<a class=\"button[^\"]*\"[^>]*>.*?</a>", html, re.DOTALL)


@pytest.mark.parametrize(
    "method, path, advice, href",
    [
        pytest.param(
            "GET", "/login/totp", "start signing in again", "/", id="a sign-in step sends the user back to the app"
        ),
        pytest.param(
            "POST", "/account/totp/confirm", "account page", "/account", id="an account form leads back to the account"
        ),
        pytest.param(
            "GET", "/logout?id_token_hint=not-a-token", "sign out from idp", "/", id="a failed logout leads home"
        ),
    ],
)
def test_an_error_page_says_what_to_do_and_gives_the_request_id_to_quote(client, method, path, advice, href):
    response = client.request(method, path, follow_redirects=False)
    assert 400 <= response.status_code < 500, response.text
    assert request_id_on(response.text) == response.headers["x-request-id"]
    assert advice in response.text
    (button,) = buttons_on(response.text)
    assert f'href="{href}"' in button


def page_request(client: TestClient, path: str = "/authorize") -> Request:
    return Request(
        {
            "type": "http",
            "app": client.app,
            "method": "GET",
            "path": path,
            "query_string": b"",
            "headers": [],
            "scheme": "http",
            "server": ("localhost", 8000),
        }
    )


def test_an_error_page_for_a_verified_redirect_has_one_button_back_to_the_application(client):
    back = "https://shop.example/callback?error=access_denied&state=a%26b&iss=http%3A%2F%2Flocalhost%3A8000"
    token = current_request_id.set("0123456789abcdef")
    try:
        response = error_page(page_request(client), 400, "You cancelled the sign-in.", return_to=back)
    finally:
        current_request_id.reset(token)
    html = response.body.decode()
    (button,) = buttons_on(html)
    assert "Return to the application" in button
    assert unescape(re.search(r'href="([^"]*)"', button).group(1)) == back  # type: ignore[union-attr]
    assert request_id_on(html) == "0123456789abcdef"
    assert response.status_code == 400 and response.headers["cache-control"] == "no-store"
    # a link, not a form: the page lets no form post anywhere but idp itself
    assert "form-action 'self';" in response.headers["content-security-policy"]


@pytest.mark.parametrize(
    "return_to",
    [
        "javascript:alert(1)",
        "data:text/html,hi",
        "//shop.example/cb",
        "not a url",
    ],
    ids=["javascript scheme", "data scheme", "scheme-relative", "garbage"],
)
def test_error_page_refuses_a_return_to_that_is_no_redirect_uri(client, return_to):
    with pytest.raises(ValueError):
        error_page(page_request(client), 400, "x", return_to=return_to)


# ---- focus after a failure ---------------------------------------------------------------------------


def autofocused(html: str) -> list[str]:
    return re.findall(r'<input[^>]*\bname="([^"]+)"[^>]*\bautofocus\b', html)


def test_the_login_page_focuses_the_username_first(client):
    assert autofocused(client.get(start(client, AuthRequest()).headers["location"]).text) == ["username"]


def test_after_a_wrong_password_focus_is_on_the_password_and_the_username_is_kept(client):
    response = submit_login(client, start(client, AuthRequest()).headers["location"], password=PASSWORD + "x")
    assert response.status_code == 401
    assert autofocused(response.text) == ["password"]
    assert 'value="alice"' in response.text
    assert re.search(r'<input[^>]*name="password"[^>]*aria-describedby="login-error"', response.text)


def test_without_a_username_focus_stays_on_the_username(client):
    response = submit_login(client, start(client, AuthRequest()).headers["location"], username="")
    assert response.status_code == 400
    assert autofocused(response.text) == ["username"]


@pytest.mark.parametrize("field", ["code", "backup_code"])
def test_after_a_wrong_code_focus_is_on_the_code_field(client, field):
    services = client.app.state.services
    with services.sessions() as db:
        uid = db.scalar(select(User.id).where(User.username == "alice"))
    with services.sessions.begin() as db:
        secret = services.factors.begin_totp(db, uid)
        assert services.factors.confirm_totp(db, uid, pyotp.TOTP(secret).at(T0)).ok
    step = submit_login(client, start(client, AuthRequest()).headers["location"]).headers["location"]
    page = client.get(step.replace("/login/totp?", "/login/backup_code?" if field == "backup_code" else "/login/totp?"))
    response = client.post(
        f"/login/{'backup_code' if field == 'backup_code' else 'totp'}",
        data={"csrf_token": form_value(page.text, "csrf_token"), "tx": form_value(page.text, "tx"), field: "000000"},
    )
    assert response.status_code == 401
    assert autofocused(response.text) == [field]
    assert re.search(rf'<input[^>]*name="{field}"[^>]*aria-describedby="code-error"', response.text)


# ---- favicon ---------------------------------------------------------------------------------------------


def test_every_page_links_the_svg_favicon_and_its_csp_allows_it(client):
    page = client.get("/login")
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page.text
    assert "img-src 'self'" in page.headers["content-security-policy"]
    icon = client.get("/static/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.text.startswith("<svg") and "<script" not in icon.text


def test_favicon_ico_is_answered_with_the_svg_icon(client):
    response = client.get("/favicon.ico", follow_redirects=False)
    assert response.status_code == 301 and response.headers["location"] == "/static/favicon.svg"
    assert client.get("/favicon.ico").headers["content-type"].startswith("image/svg+xml")


# ---- WCAG 2.2 SC 1.4.11 non-text contrast, from the stylesheet ---------------------------------------------

MINIMUM = 3.0
# the surfaces inputs and focusable controls sit on: (selector, id)
SURFACES = [
    (":root", "page"),
    (".card", "card"),
    (".passkey-item", "passkey list item"),
    (".session-item", "session list item"),
    (".session-item.session-current", "this browser's session"),
]
NAMED = {"white": "#ffffff", "black": "#000000"}


def css_rules(text: str) -> dict[str, dict[str, str]]:
    """selector → {property: value}, later declarations winning; @media blocks flattened."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    rules: dict[str, dict[str, str]] = {}
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", text):
        declarations = {
            name.strip(): value.strip() for name, _, value in (d.partition(":") for d in body.split(";") if ":" in d)
        }
        for selector in selectors.split(","):
            rules.setdefault(" ".join(selector.split()), {}).update(declarations)
    return rules


def colour_of(value: str, variables: dict[str, str]) -> str:
    """The one colour in a declaration's value (var() resolved), as #rrggbb."""
    value = re.sub(r"var\((--[\w-]+)\)", lambda m: variables[m.group(1)], value)
    found = re.findall(r"#[0-9a-fA-F]{3,8}\b|\b(?:" + "|".join(NAMED) + r")\b", value)
    assert len(found) == 1, f"expected one colour in {value!r} (this test reads hex colours)"
    colour = NAMED.get(found[0], found[0]).lstrip("#")
    assert len(colour) in (3, 6), f"{found[0]}: colours here must be opaque"
    return "#" + (colour if len(colour) == 6 else "".join(c * 2 for c in colour)).lower()


def luminance(colour: str) -> float:
    """WCAG 2.2 relative luminance."""
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


@pytest.fixture(scope="module")
def stylesheet() -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    rules = css_rules(CSS.read_text(encoding="utf-8"))
    variables = {name: value for name, value in rules[":root"].items() if name.startswith("--")}
    return rules, variables


def surfaces(stylesheet) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    rules, variables = stylesheet
    return [(name, colour_of(rules[selector]["background"], variables)) for selector, name in SURFACES]


def colours_of(stylesheet, selector_matches, properties) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    rules, variables = stylesheet
    found = [
        (selector, colour_of(value, variables))
        for selector, declarations in rules.items()
        if selector_matches(selector)
        for name, value in declarations.items()
        if name in properties
    ]
    assert found, "no such rule in idp.css"
    return found


def test_the_contrast_formula_matches_wcag():
    assert contrast("#ffffff", "#000000") == pytest.approx(21.0)
    assert contrast("#b8c0cc", "#ffffff") == pytest.approx(1.83, abs=0.01)  # the old input border


def test_input_borders_have_3_to_1_against_every_surface(stylesheet):
    borders = colours_of(
        stylesheet, lambda s: re.search(r"\binput\b(?!:focus)", s) is not None, ("border", "border-color")
    )
    low = [
        (selector, colour, name, round(contrast(colour, surface), 2))
        for selector, colour in borders
        for name, surface in surfaces(stylesheet)
        if contrast(colour, surface) < MINIMUM
    ]
    assert low == []


def test_the_focus_ring_has_3_to_1_against_every_surface_and_covers_every_control(stylesheet):
    rings = colours_of(stylesheet, lambda s: ":focus" in s, ("outline", "outline-color"))
    low = [
        (selector, colour, name, round(contrast(colour, surface), 2))
        for selector, colour in rings
        for name, surface in surfaces(stylesheet)
        if contrast(colour, surface) < MINIMUM
    ]
    assert low == []
    assert {"button:focus-visible", "input:focus-visible", "a:focus-visible"} <= {s for s, _ in rings}


# ---- a sign-in that can go no further, whose redirect URI was verified: one button back ----------

RETURN_LINK = re.compile(r'<a class="button" href="([^"]+)">Return to the application</a>')


def return_link(response) -> str | None:  # type: ignore[no-untyped-def]
    match = RETURN_LINK.search(response.text)
    return unescape(match.group(1)) if match else None


def test_a_finished_sign_in_revisited_offers_the_way_back_to_the_rp_with_the_error_state_and_iss(client):
    """The login page of a sign-in that already finished (the back button after signing in):
    the page says it expired, and its only button returns to the RP's verified redirect_uri
    with error=access_denied, the request's state and our iss."""
    request = AuthRequest()
    login_page = start(client, request).headers["location"]
    assert submit_login(client, login_page).status_code == 303  # finished; its resume not yet taken
    again = client.get(login_page)
    assert again.status_code == 400
    link = return_link(again)
    assert link is not None, again.text
    base, _, query = link.partition("?")
    assert base == request.redirect_uri
    params = {key: values[0] for key, values in parse_qs(query).items()}
    assert params["error"] == "access_denied" and params["state"] == request.state
    assert params["iss"] == client.app.state.services.oidc.issuer


def test_another_browser_presenting_the_transaction_gets_no_way_back_and_learns_nothing(client):
    """The same page for a transaction of another browser as for an unknown one: no link to
    the RP (its state is the first browser's), nothing else to learn."""
    login_page = start(client, AuthRequest()).headers["location"]
    assert submit_login(client, login_page).status_code == 303
    with TestClient(client.app, base_url=str(client.base_url)) as other:
        theirs = other.get(login_page)
        unknown = other.get("/login?tx=" + "x" * 32)
    assert theirs.status_code == unknown.status_code == 400
    assert return_link(theirs) is None and return_link(unknown) is None
