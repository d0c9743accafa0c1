"""Content-Security-Policy violations seen by a real browser, for the end-to-end suites.

`CspViolations.record(context)` watches every page of a Playwright browser context, from
its next navigation on: each `securitypolicyviolation` event any document dispatches
(reported through an exposed binding) and each console message naming the Content Security
Policy (Chromium logs "Refused to send form data to … because it violates the following
Content Security Policy directive" when `form-action` blocks a redirect after a form POST).
A test asserts `assert_none()` at the end, and waits for a page with `wait_for_url`, which
names the violations (not only a timeout) when the browser was stopped by the policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from playwright.sync_api import BrowserContext, ConsoleMessage, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

BINDING = "__idpReportCspViolation"
CONSOLE_MARK = "Content Security Policy"

# Capturing on window sees the event whatever it is dispatched on (element, document, window).
_LISTENER = f"""
window.addEventListener('securitypolicyviolation', e => {{
  window.{BINDING}(e.violatedDirective + ' ' + e.blockedURI + ' (on ' + e.documentURI + ')');
}}, true);
"""


@dataclass
class CspViolations:
    events: list[str] = field(default_factory=list)  # "<directive> <blocked URI> (on <document>)"
    console: list[str] = field(default_factory=list)  # Chromium's console lines about the policy

    @classmethod
    def record(cls, context: BrowserContext) -> CspViolations:
        """Starts recording in every page of `context` (pages open now take it at their next
        navigation); call before the journey's first `goto`."""
        recorder = cls()
        context.expose_binding(BINDING, lambda source, text: recorder.events.append(str(text)))
        context.add_init_script(_LISTENER)
        context.on("console", recorder._on_console)
        return recorder

    def _on_console(self, message: ConsoleMessage) -> None:
        if CONSOLE_MARK in message.text:
            where = message.page.url if message.page else "?"
            self.console.append(f"{message.text.strip()} (on {where})")

    def describe(self) -> str:
        lines = [f"securitypolicyviolation: {event}" for event in self.events]
        lines += [f"console: {text}" for text in self.console]
        return "\n".join(lines)

    def assert_none(self, doing: str = "") -> None:
        assert not self.events and not self.console, (
            "Content-Security-Policy violations" + (f" {doing}" if doing else "") + ":\n" + self.describe()
        )

    def wait_for_url(self, page: Page, predicate: Callable[[str], bool], what: str, **kwargs: Any) -> None:
        """`page.wait_for_url(predicate)`; if it never comes, fails naming the violations
        recorded (the usual reason a browser stays on a form) before the timeout itself."""
        try:
            page.wait_for_url(predicate, **kwargs)
            return
        except PlaywrightTimeoutError:
            pass
        self.assert_none(f"while waiting for {what} (the browser stayed on {page.url})")
        raise AssertionError(f"never reached {what}: the browser stayed on {page.url}")
