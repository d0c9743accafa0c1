"""Driving idp's hosted pages in a real browser (Playwright), the way a person does: only
through the contract's selectors (DESIGN.md §3) and by following redirects, never by typing
a login URL path. One copy for every browser suite."""
from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from playwright.sync_api import Page, expect


def at_path(path: str) -> Callable[[str], bool]:
    """A `wait_for_url` predicate: the page's path is `path`, whatever the query."""
    return lambda url: urlsplit(url).path == path


def visited_paths(page: Page) -> list[str]:
    """Every top-level URL path the browser requests from now on (redirects included)."""
    paths: list[str] = []
    page.on("request", lambda r: paths.append(urlsplit(r.url).path)
            if r.is_navigation_request() and r.frame == page.main_frame else None)
    return paths


def sign_in(page: Page, username: str, password: str) -> None:
    """The login page's form: username, password, "Sign in"."""
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.locator("input[name=username]").fill(username)
    page.locator("input[name=password]").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()
