"""Driving idp's hosted pages in a real browser (Playwright), the way a person does: only
through the contract's selectors (DESIGN.md §3) and by following redirects, never by typing
a login URL path. One copy for every browser suite."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, expect

PASSKEY = re.compile("passkey", re.IGNORECASE)  # §3: "a button whose accessible name contains 'passkey'"
BACKUP_CODE_CONTROL = re.compile("backup code", re.IGNORECASE)  # §3: 'a control named "…backup code…"'
BACKUP_CODE_FORMAT = re.compile(r"\b[A-Z0-9]{4}-[A-Z0-9]{4}\b")  # §3: 10 backup codes XXXX-XXXX
SUBMIT = "button:not([type]), button[type=submit], input[type=submit]"


def at_path(path: str) -> Callable[[str], bool]:
    """A `wait_for_url` predicate: the page's path is `path`, whatever the query."""
    return lambda url: urlsplit(url).path == path


def visited_paths(page: Page) -> list[str]:
    """Every top-level URL path the browser requests from now on (redirects included)."""
    paths: list[str] = []
    page.on(
        "request",
        lambda r: (
            paths.append(urlsplit(r.url).path) if r.is_navigation_request() and r.frame == page.main_frame else None
        ),
    )
    return paths


def sign_in(page: Page, username: str, password: str) -> None:
    """The login page's form: username, password, "Sign in"."""
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.locator("input[name=username]").fill(username)
    page.locator("input[name=password]").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()


# --- the contract's fields and buttons (DESIGN.md §3) -------------------------------------------


def password_field(page: Page) -> Locator:
    return page.locator("input[name=password][type=password][autocomplete=current-password]")


def code_field(page: Page) -> Locator:
    """The TOTP step's field (also the /account set-up's confirmation field)."""
    return page.locator("input[name=code][autocomplete=one-time-code][inputmode=numeric]")


def backup_code_field(page: Page) -> Locator:
    return page.locator("input[name=backup_code]")


def passkey_button(page: Page) -> Locator:
    """The login page's passkey sign-in, or the passkey step of the login chain."""
    return page.get_by_role("button", name=PASSKEY)


def allow_button(page: Page) -> Locator:
    return page.get_by_role("button", name="Allow", exact=True)


def submit_form_of(page: Page, field: Locator) -> None:
    """Clicks the submit button of the form that holds `field` (whatever its label)."""
    page.locator("form").filter(has=field).locator(SUBMIT).first.click()


def describe(page: Page) -> str:
    """Where the browser is, for a failure message: URL, main heading, any alert shown."""
    try:
        heading = page.locator("h1").first.inner_text(timeout=1_000).strip()
        alerts = [text.strip() for text in page.get_by_role("alert").all_inner_texts() if text.strip()]
    except PlaywrightError:  # the page is between two documents
        heading, alerts = "?", []
    return f"{page.url} (heading {heading!r}, alerts {alerts})"


# --- the steps of the login chain ----------------------------------------------------------------


def enter_code(page: Page, code: str) -> None:
    """The TOTP step: the code from the authenticator app, then the form's submit button."""
    field = code_field(page)
    expect(field).to_be_visible()
    field.fill(code)
    submit_form_of(page, field)


def enter_backup_code(page: Page, code: str) -> None:
    """From the TOTP step, the "…backup code…" control, then the backup code."""
    page.get_by_role("link", name=BACKUP_CODE_CONTROL).or_(page.get_by_role("button", name=BACKUP_CODE_CONTROL)).click()
    field = backup_code_field(page)
    expect(field).to_be_visible()
    field.fill(code)
    submit_form_of(page, field)


def continue_after_backup_code(page: Page) -> None:
    """The notice that a backup code was used up (and how many are left): "Continue"."""
    page.get_by_role("link", name="Continue", exact=True).click()


def allow(page: Page) -> None:
    """The consent page: "Allow" (its twin is "Deny")."""
    expect(page.get_by_role("button", name="Deny", exact=True)).to_be_visible()
    allow_button(page).click()


# --- /account: second factors ---------------------------------------------------------------------


def set_up_totp(page: Page) -> str:
    """On /account: starts the authenticator-app set-up; returns the base32 key shown as text."""
    page.get_by_role("button", name="Set up an authenticator app").click()
    expect(page.get_by_role("img", name=re.compile("QR code", re.IGNORECASE))).to_be_visible()
    key = re.sub(r"\s", "", page.locator("[data-totp-secret]").inner_text())
    assert re.fullmatch(r"[A-Z2-7]{16,}", key), key
    return key


def confirm_totp(page: Page, code: str) -> list[str]:
    """Confirms the set-up with a first code; returns the 10 backup codes shown (once), then
    leaves their page as a person does once they are saved."""
    enter_code(page, code)
    heading = page.get_by_role("heading", name=re.compile("backup codes", re.IGNORECASE))
    expect(heading).to_be_visible()
    codes = BACKUP_CODE_FORMAT.findall(page.locator("body").inner_text())
    assert len(codes) == 10 and len(set(codes)) == 10, codes
    page.get_by_role("link", name="I have saved them").click()
    expect(page.get_by_role("button", name="Set up an authenticator app")).to_have_count(0)
    return codes


def add_passkey(page: Page, name: str) -> None:
    """On /account: names a new passkey and registers it ("Add a passkey"); waits until it is listed."""
    add = page.get_by_role("button", name="Add a passkey")
    form = page.locator("form").filter(has=add)
    expect(form).to_be_visible()  # shown by the script once WebAuthn is there
    form.get_by_role("textbox", name=re.compile("name", re.IGNORECASE)).fill(name)
    add.click()
    expect(page.get_by_text(name, exact=True)).to_be_visible()


# --- RP-Initiated Logout ----------------------------------------------------------------------------


def confirm_sign_out(page: Page) -> None:
    """The logout confirmation idp shows for a request not tied to the session: "Sign out"."""
    button = page.get_by_role("button", name="Sign out", exact=True)
    expect(button).to_be_visible()
    button.click()
