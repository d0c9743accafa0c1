"""No dead ends on the hosted pages (issue 14, item 9), in Debian's Chromium against a real
`idp serve`: signing out from / and /account, focus on the password after a wrong one, no
404 in any page load (the favicon included), and a focus ring that can be seen. Every test
fails on any Content-Security-Policy violation."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Page, Response, expect

from tests.support.csp import CspViolations
from tests.support.hosted_pages import at_path, sign_in

if TYPE_CHECKING:
    from .conftest import RunningIdp

pytestmark = pytest.mark.browser

WRONG_PASSWORD = "not the password"


@pytest.fixture
def csp(page: Page) -> Iterator[CspViolations]:
    violations = CspViolations.record(page.context)
    yield violations
    violations.assert_none()


@pytest.fixture
def not_found(page: Page) -> Iterator[list[str]]:
    """Every URL the browser got a 404 for, from any page of the test (checked at the end)."""
    missing: list[str] = []

    def seen(response: Response) -> None:
        if response.status == 404:
            missing.append(response.url)

    page.context.on("response", seen)
    yield missing
    assert missing == []


def signed_in_on_account(page: Page, idp: RunningIdp) -> None:
    """/account sends a signed-out browser to the login page, which comes back to /account."""
    page.goto(f"{idp.issuer}/account")
    page.wait_for_url(at_path("/login"))
    sign_in(page, idp.username, idp.password)
    page.wait_for_url(at_path("/account"))
    expect(page.get_by_role("heading", name="Your account")).to_be_visible()


@pytest.mark.parametrize("path", ["/", "/account"], ids=["from the home page", "from the account page"])
def test_sign_out_ends_the_session_on_the_signed_out_page(page, idp, csp, not_found, path):
    signed_in_on_account(page, idp)
    page.goto(f"{idp.issuer}{path}")
    expect(page.get_by_text(re.compile(r"signed in as", re.IGNORECASE)).first).to_be_visible()
    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page.get_by_role("heading", name="You are signed out")).to_be_visible()
    assert not [c for c in page.context.cookies(idp.issuer) if c["name"].endswith("idp_session")]

    page.goto(f"{idp.issuer}/")
    expect(page.get_by_text("You are not signed in")).to_be_visible()
    page.goto(f"{idp.issuer}/account")
    page.wait_for_url(at_path("/login"))  # the session really ended


def test_after_a_wrong_password_focus_is_on_the_password_field(page, idp, csp, not_found):
    page.goto(f"{idp.issuer}/account")
    page.wait_for_url(at_path("/login"))
    assert page.evaluate("document.activeElement.name") == "username"
    sign_in(page, idp.username, WRONG_PASSWORD)
    expect(page.get_by_role("alert").filter(has_text="incorrect")).to_be_visible()
    assert page.evaluate("document.activeElement.name") == "password"
    expect(page.locator("input[name=username]")).to_have_value(idp.username)

    page.keyboard.type(idp.password)  # straight into the focused field
    page.keyboard.press("Enter")
    page.wait_for_url(at_path("/account"))


def test_no_request_of_a_page_load_gets_a_404(page, idp, csp, not_found):
    page.goto(f"{idp.issuer}/")
    signed_in_on_account(page, idp)
    page.goto(f"{idp.issuer}/")
    page.goto(f"{idp.issuer}/login/totp")  # an error page
    expect(page.get_by_role("heading", name="We could not continue")).to_be_visible()
    expect(page.get_by_text("quote this request id")).to_be_visible()
    page.get_by_role("link", name="Go to idp's home page").click()
    page.wait_for_url(at_path("/"))

    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert icon == "/static/favicon.svg"
    for path in (icon, "/favicon.ico"):  # what a browser asks for without a <link rel=icon>
        answer = page.request.get(f"{idp.issuer}{path}")
        assert answer.status == 200 and answer.headers["content-type"].startswith("image/svg+xml"), path


def rgb(css_colour: str) -> str:
    """'rgb(59, 99, 209)' → '#3b63d1'."""
    parts = re.fullmatch(r"rgba?\((\d+), (\d+), (\d+)(?:, 1)?\)", css_colour)
    assert parts, f"not an opaque colour: {css_colour}"
    return "#" + "".join(f"{int(p):02x}" for p in parts.groups())


def contrast(a: str, b: str) -> float:
    def luminance(colour: str) -> float:
        r, g, b = (
            c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
            for c in (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
        )
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


FOCUS_STYLE = """() => {
  const ring = getComputedStyle(document.activeElement);
  const card = getComputedStyle(document.querySelector('main.card'));
  return {name: document.activeElement.name || document.activeElement.textContent.trim(),
          style: ring.outlineStyle, width: parseFloat(ring.outlineWidth), colour: ring.outlineColor,
          background: card.backgroundColor};
}"""


def test_the_focus_ring_is_visible_on_inputs_and_buttons(page, idp, csp, not_found):
    page.goto(f"{idp.issuer}/login")
    for expected in ("password", "Sign in"):  # from the autofocused username, by keyboard
        page.keyboard.press("Tab")
        focus = page.evaluate(FOCUS_STYLE)
        assert focus["name"] == expected, focus
        assert focus["style"] == "solid" and focus["width"] >= 2, focus
        assert contrast(rgb(focus["colour"]), rgb(focus["background"])) >= 3, focus
