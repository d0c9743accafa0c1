"""One-time links and Forgot password? (issue 18) end to end in Debian's Chromium: what the
user sees on each page, and what the database, the audit trail and a real mailbox hold
afterwards. An invitation by mail (a mail scanner fetches it first) that sets a password
and enrols TOTP; an invitation that enrols a passkey for a phr group; a recovery that ends
another browser's session and leaves the account at pwd until a new factor; a reset asked
for on the login page that still asks for the TOTP code; a link confirmed in one browser
refused in another; an address verification; and Forgot password? with the mail server down.

One idp built in this process with mail on (aiosmtpd, tests/support/smtp.py, fast retries),
served by uvicorn; one user per journey; pyotp as the authenticator app; Chromium's virtual
WebAuthn authenticator as the device; every journey fails on a Content-Security-Policy
violation, in every browser context it opens."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pyotp
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select
from starlette.applications import Starlette

from idp.app import create_app
from idp.db.models import AuditEvent, IdpSession, OneTimeLink, User
from idp.groups import add_members
from idp.links import delivery, records
from idp.links.records import Kind
from idp.mail import notices
from idp.settings import Settings, load_settings
from idp.users import add_user
from idp.web.services import Services
from tests.support.csp import CspViolations
from tests.support.hosted_pages import (
    BACKUP_CODE_FORMAT,
    allow,
    at_path,
    code_field,
    enter_code,
    password_field,
    sign_in,
    submit_form_of,
)
from tests.support.idp_server import sqlite_environment
from tests.support.journeys import (
    Expected,
    RelyingParty,
    arrive,
    assert_id_token,
    clients_toml,
    document_statuses,
    reach,
    serving_relying_party_site,
    session_cookie,
    virtual_authenticator,
)
from tests.support.processes import free_port, run_cli
from tests.support.smtp import Received, SmtpServer, smtp_server

pytestmark = pytest.mark.browser

PASSWORD = "a long passphrase for the lifecycle journeys"  # what a user with a password has
NEW_PASSWORD = "plum tractor velvet orbit lantern"  # what a link's page sets
ADMINS = "admins"  # min_acr mfa
VAULT = "vault"  # min_acr phr
MAIL_FROM = "id@example.com"
FAST_RETRIES = (0.01, 0.02)  # three attempts within a blink (idp/mail/outbox.py)
MAIL_WAIT_SECONDS = 10.0
ANSWERS_AT_ONCE_SECONDS = 3.0  # a page that waited on SMTP would take smtplib's 10 s timeout
MFA = Expected("mfa", frozenset({"pwd", "otp", "mfa"}))
TOTP_PERIOD = 30
TOTP_MARGIN_SECONDS = 8


# --- the user's authenticator app (pyotp) ----------------------------------------------------------


@dataclass
class AuthenticatorApp:
    """One secret; each code from the earliest time step idp still accepts after the last
    one used (idp takes a code once per step, ±1 step), so no journey waits for the clock."""

    secret: str
    last_step: int | None = None

    def code(self) -> str:
        now = time.time()
        current = int(now // TOTP_PERIOD)
        earliest = current - 1 if (current + 1) * TOTP_PERIOD - now >= TOTP_MARGIN_SECONDS else current
        step = earliest if self.last_step is None else max(earliest, self.last_step + 1)
        assert step <= current + 1, "a fourth code within one time step would have to wait"
        self.last_step = step
        return pyotp.TOTP(self.secret).at(step * TOTP_PERIOD)


# --- the deployment: idp with mail on, the mailbox, Shop on its own origin ----------------------


@dataclass(frozen=True)
class SentLink:
    link_id: str
    url: str


@dataclass(frozen=True)
class Deployment:
    issuer: str
    app: Starlette
    smtp: SmtpServer
    shop: RelyingParty  # asks for consent

    @property
    def services(self) -> Services:
        return self.app.state.services  # type: ignore[no-any-return]

    def new_user(
        self, username: str, *, password: bool = True, verified: bool = True, groups: tuple[str, ...] = ()
    ) -> None:
        services = self.services
        with services.sessions.begin() as db:
            add_user(
                db,
                username=username,
                email=f"{username}@example.com",
                name=username.title(),
                password_hash=services.hashing.hash(PASSWORD) if password else None,
                email_verified=verified,
            )
            for group in groups:
                assert add_members(db, group, [username]) == (username,)

    def enable_totp(self, username: str) -> AuthenticatorApp:
        """The authenticator app set up and confirmed with its first code."""
        services, uid = self.services, self.user(username).id
        with services.sessions.begin() as db:
            app = AuthenticatorApp(services.factors.begin_totp(db, uid))
        with services.sessions.begin() as db:
            assert services.factors.confirm_totp(db, uid, app.code()).ok
        return app

    def link(self, username: str, kind: Kind, *, mailed: bool) -> SentLink:
        """A link as `idp user invite|recover|verify-email` makes it: mailed through the app's
        mailer (the URL read from the mail's text part), or printed for the admin to hand over."""
        services, user = self.services, self.user(username)
        email = user.email if kind == "verify" or (kind == "invite" and mailed) else None
        with services.sessions.begin() as db:
            issued = records.issue(db, services.keyring, user.id, kind, by="cli", email=email)
        if not mailed:
            return SentLink(issued.link_id, delivery.url_of(self.issuer, issued.secret))
        delivery.send(services.mail, issued, self.issuer, at=services.clock.now().strftime("%Y-%m-%d %H:%M UTC"))
        return SentLink(issued.link_id, link_in(self.mail(username, delivery.SUBJECTS[kind])))

    def mail(self, username: str, subject: str) -> Received:
        """The message with `subject` the mailbox received for `username`, waited for."""
        address = f"{username}@example.com"

        def found() -> Received | None:
            return next((r for r in self.smtp.received if r.rcpt_tos == (address,) and subject_of(r) == subject), None)

        with self.smtp.arrived:
            received = self.smtp.arrived.wait_for(found, timeout=MAIL_WAIT_SECONDS)
        assert received is not None, (subject, [(r.rcpt_tos, subject_of(r)) for r in self.smtp.received])
        return received

    def user(self, username: str) -> User:
        with self.services.sessions() as db:
            user = db.scalar(select(User).where(User.username == username))
            assert user is not None
            db.expunge(user)
            return user

    def link_row(self, link_id: str) -> OneTimeLink:
        with self.services.sessions() as db:
            row = db.scalar(select(OneTimeLink).where(OneTimeLink.link_id == link_id))
            assert row is not None
            db.expunge(row)
            return row

    def audit(self, username: str) -> list[AuditEvent]:
        """The user's audit rows, oldest first."""
        uid = self.user(username).id
        with self.services.sessions() as db:
            rows = list(db.scalars(select(AuditEvent).where(AuditEvent.user_id == uid).order_by(AuditEvent.id)))
            db.expunge_all()
            return rows

    def live_sessions(self, username: str) -> list[IdpSession]:
        uid = self.user(username).id
        with self.services.sessions() as db:
            query = select(IdpSession).where(IdpSession.user_id == uid, IdpSession.ended_at.is_(None))
            rows = list(db.scalars(query))
            db.expunge_all()
            return rows


def link_in(received: Received) -> str:
    text = received.part("text/plain")
    found = re.findall(r"http://localhost:[0-9]+/link\?t=[A-Za-z0-9_-]+", text)
    assert len(found) == 1, text
    return str(found[0])


def subject_of(received: Received) -> str:
    return str(received.message["Subject"])


@contextmanager
def serving(app: Starlette, port: int) -> Iterator[None]:
    """uvicorn in a thread on 127.0.0.1:port until the block ends (the app's lifespan too)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def mail_settings(env: dict[str, str], smtp_url: str) -> Settings:
    """The deployment's settings with mail on, as an admin sets it (checked by load_settings)."""
    return load_settings(environ={**env, "IDP_SMTP_URL": smtp_url, "IDP_MAIL_FROM": MAIL_FROM})


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    workdir: Path = tmp_path_factory.mktemp("lifecycle")
    port = free_port()
    client_secrets = {"shop": secrets.token_urlsafe(36), "portal": secrets.token_urlsafe(36)}
    with smtp_server("plain") as smtp, serving_relying_party_site() as site:
        env = sqlite_environment(workdir / "idp", port, clients_toml(site, client_secrets))
        run_cli(env, "db", "upgrade")
        run_cli(env, "group", "add", ADMINS, "--min-acr", "mfa")
        run_cli(env, "group", "add", VAULT, "--min-acr", "phr")
        app = create_app(mail_settings(env, smtp.url(starttls=False)), mail_retry_delays_seconds=FAST_RETRIES)
        with serving(app, port):
            issuer = f"http://localhost:{port}"
            yield Deployment(issuer, app, smtp, RelyingParty.discover(issuer, "shop", client_secrets["shop"], site))


@pytest.fixture
def csp(page: Page) -> Iterator[CspViolations]:
    recorder = CspViolations.record(page.context)
    yield recorder
    recorder.assert_none("during the journey")


@dataclass(frozen=True)
class OtherBrowser:
    page: Page
    csp: CspViolations


@pytest.fixture
def other(browser: Browser) -> Iterator[OtherBrowser]:
    """A second browser profile (its own cookies), held to the same CSP rule."""
    context = browser.new_context()
    context.set_default_timeout(10_000)
    recorder = CspViolations.record(context)
    try:
        yield OtherBrowser(context.new_page(), recorder)
        recorder.assert_none("in the other browser")
    finally:
        context.close()


# --- the pages of a link -----------------------------------------------------------------------------


def open_link(page: Page, csp: CspViolations, url: str, title: str, username: str) -> None:
    """The confirmation page (its GET uses nothing): says what for and whose account; "Continue"."""
    page.goto(url)
    reach(page, csp, page.get_by_role("heading", name=title), f"the confirmation page ({title})")
    expect(page.locator("main strong").first).to_have_text(username)
    button = "Confirm my address" if title == "Confirm your e-mail address" else "Continue"
    page.get_by_role("button", name=button, exact=True).click()


def choose_password(page: Page, csp: CspViolations, *, remove: tuple[str, ...] = ()) -> None:
    """The link's password page: NEW_PASSWORD twice, the lost factors ticked."""
    new = page.get_by_label("New password", exact=True)
    reach(page, csp, new, "the link's password page")
    assert urlsplit(page.url).path == "/link/password", page.url
    new.fill(NEW_PASSWORD)
    page.get_by_label("New password again", exact=True).fill(NEW_PASSWORD)
    for label in remove:
        page.get_by_label(label, exact=True).check()
    page.get_by_role("button", name="Set password and continue").click()


def enrol_totp(page: Page, csp: CspViolations) -> AuthenticatorApp:
    """The chain's enrolment step: the key shown, a code from it, the 10 backup codes."""
    reach(page, csp, page.get_by_role("heading", name="Set up two-step verification"), "the TOTP enrolment step")
    assert urlsplit(page.url).path == "/login/enrol_totp", page.url
    secret = page.locator("[data-totp-secret]").get_attribute("data-totp-secret") or ""
    assert re.fullmatch(r"[A-Z2-7]{16,}", secret), secret
    app = AuthenticatorApp(secret)
    code_field(page).fill(app.code())
    submit_form_of(page, code_field(page))
    reach(page, csp, page.get_by_role("heading", name="Save your backup codes"), "the backup codes")
    codes = BACKUP_CODE_FORMAT.findall(page.locator("main").inner_text())
    assert len(codes) == 10 and len(set(codes)) == 10, codes
    page.get_by_role("link", name="I have saved them").click()
    return app


def at_account(page: Page, csp: CspViolations, username: str) -> None:
    arrive(page, csp, at_path("/account"), f"/account of {username}")
    reach(page, csp, page.get_by_role("heading", name="Your account"), "/account")
    expect(page.locator(".signed-in strong")).to_have_text(username)


def at_sign_in(page: Page, csp: CspViolations, what: str) -> None:
    arrive(page, csp, at_path("/login"), what)
    reach(page, csp, password_field(page), what)


def kinds(events: list[AuditEvent]) -> list[str]:
    return [event.kind for event in events]


def only(events: list[AuditEvent], kind: str) -> AuditEvent:
    [event] = [e for e in events if e.kind == kind]
    return event


# --- the journeys --------------------------------------------------------------------------------------


def test_a_mailed_invitation_survives_a_scanner_then_sets_a_password_and_enrols_totp(
    page: Page, csp: CspViolations, deployment: Deployment
) -> None:
    deployment.new_user("ines", password=False, verified=False, groups=(ADMINS,))
    link = deployment.link("ines", "invite", mailed=True)
    assert link.url.startswith(deployment.issuer + "/link?t=")

    scanned = httpx.get(link.url, timeout=10)  # a mail scanner: no cookies, GET only, before the user
    assert scanned.status_code == 200 and "ines" in scanned.text
    assert deployment.link_row(link.link_id).confirmed_at is None

    open_link(page, csp, link.url, "Set up your account", "ines")
    choose_password(page, csp)
    enrol_totp(page, csp)
    at_account(page, csp, "ines")

    user = deployment.user("ines")
    assert user.email_verified and user.password_hash is not None
    [session] = deployment.live_sessions("ines")
    assert session.acr == "mfa", (session.acr, session.amr)
    events = deployment.audit("ines")
    for kind in ("link.issued", "link.confirmed", "link.used", "user.password_set", "email.verified"):
        assert kind in kinds(events), kinds(events)
    assert only(events, "login.succeeded").detail["link_id"] == link.link_id
    # the invitation, then the notice that an authenticator app was turned on (chain enrolment)
    notice = deployment.mail("ines", "An authenticator app was turned on for your account")
    assert link.url not in notice.part("text/plain")
    assert deployment.services.mail.wait_idle(MAIL_WAIT_SECONDS)  # mail.sent is written after the send
    sent = [e.detail["mail"] for e in deployment.audit("ines") if e.kind == "mail.sent"]
    assert sorted(sent) == ["link_invite", "totp_enabled"], sent


def test_an_invitation_to_a_phr_member_with_a_password_enrols_a_passkey_and_signs_in_with_it(
    page: Page, csp: CspViolations, deployment: Deployment
) -> None:
    deployment.new_user("petra", groups=(VAULT,))
    link = deployment.link("petra", "invite", mailed=False)  # printed: handed over in person
    authenticator = virtual_authenticator(page)

    open_link(page, csp, link.url, "Set up your account", "petra")
    reach(page, csp, password_field(page), "the password step (an account with a password)")
    expect(page.locator("input[name=username]")).to_have_value("petra")
    sign_in(page, "petra", PASSWORD)
    reach(page, csp, page.get_by_role("heading", name="Add a passkey"), "the passkey enrolment step")
    assert urlsplit(page.url).path == "/login/enrol_passkey", page.url
    page.locator("#passkey-name").fill("Petra's laptop")
    page.get_by_role("button", name="Add a passkey").click()
    reach(page, csp, page.get_by_role("heading", name="Use your passkey"), "the passkey step after enrolment")
    assert len(authenticator.credentials()) == 1
    page.get_by_role("button", name="Use your passkey").click()
    at_account(page, csp, "petra")

    [session] = deployment.live_sessions("petra")
    assert session.acr == "phr", (session.acr, session.amr)
    events = deployment.audit("petra")
    assert only(events, "passkey.added").detail["during"] == "login"
    assert only(events, "login.succeeded").detail["link_id"] == link.link_id
    assert deployment.link_row(link.link_id).used_at is not None


def test_a_recovery_ends_the_other_session_mails_a_notice_and_the_rp_steps_up_to_enrolment(
    page: Page, csp: CspViolations, other: OtherBrowser, deployment: Deployment
) -> None:
    deployment.new_user("rosa")
    app = deployment.enable_totp("rosa")
    # the lost phone's browser, still signed in
    other.page.goto(f"{deployment.issuer}/account")
    at_sign_in(other.page, other.csp, "the login page in the other browser")
    sign_in(other.page, "rosa", PASSWORD)
    enter_code(other.page, app.code())
    at_account(other.page, other.csp, "rosa")

    link = deployment.link("rosa", "recover", mailed=True)
    open_link(page, csp, link.url, "Recover your account", "rosa")
    expect(page.get_by_label("My backup codes", exact=True)).to_have_count(0)  # she has none
    choose_password(page, csp, remove=("My authenticator app",))
    at_account(page, csp, "rosa")

    recovered = page.locator('.activity-item[data-kind="account.recovered"]')
    expect(recovered).to_contain_text("Account recovered with a recovery link")
    other.page.goto(f"{deployment.issuer}/account")
    at_sign_in(other.page, other.csp, "the other browser's /account sending it to sign in")
    [session] = deployment.live_sessions("rosa")
    assert (session.acr, session.amr) == ("pwd", ["pwd"])
    events = deployment.audit("rosa")
    detail = only(events, "account.recovered").detail
    assert detail["removed"] == ["totp"] and detail["sessions_ended"] == 1, detail
    notice = deployment.mail("rosa", notices.ACCOUNT_RECOVERED.subject)
    assert NEW_PASSWORD not in notice.raw.decode("ascii", "replace")

    shop = deployment.shop
    authorization = shop.authorization(acr_values="mfa")
    callbacks = len(shop.site.callbacks)
    since = time.time()
    page.goto(authorization.url)
    at_sign_in(page, csp, "the step-up's password (a factor is added after a fresh password)")
    sign_in(page, "rosa", NEW_PASSWORD)
    enrol_totp(page, csp)
    assert len(shop.site.callbacks) == callbacks, "no code for Shop before the enrolment"
    reach(page, csp, page.get_by_role("heading", name="Allow Shop?"), "Shop's consent page")
    allow(page)
    arrive(page, csp, lambda url: url.startswith(shop.site.redirect_uri + "?"), "Shop's redirect_uri")
    token = shop.redeem(authorization, urlsplit(page.url).query)
    assert_id_token(token, MFA, since=since)


def test_forgot_password_mails_a_reset_that_still_asks_for_the_totp_code(
    page: Page, csp: CspViolations, deployment: Deployment
) -> None:
    deployment.new_user("fred")
    app = deployment.enable_totp("fred")
    page.goto(f"{deployment.issuer}/account")
    at_sign_in(page, csp, "the login page")
    page.get_by_role("link", name="Forgot password?").click()
    answer = ask_for_a_reset(page, csp, "fred")

    link = link_in(deployment.mail("fred", delivery.SUBJECTS["reset"]))
    open_link(page, csp, link, "Reset your password", "fred")
    choose_password(page, csp)
    reach(page, csp, code_field(page), "the TOTP step after the reset")
    assert urlsplit(page.url).path == "/login/totp", page.url
    assert session_cookie(page) is None  # the link alone signs nobody in past the second factor
    enter_code(page, app.code())
    at_account(page, csp, "fred")

    events = deployment.audit("fred")
    requested = only(events, "password.reset_requested")
    assert requested.outcome == "success" and requested.detail["known_user"] is True, requested.detail
    assert only(events, "password.reset").detail["link_id"] == requested.detail["link_id"]
    assert deployment.mail("fred", notices.PASSWORD_RESET.subject)

    mailbox = len(deployment.smtp.received)
    page.goto(f"{deployment.issuer}/login/forgot")
    assert ask_for_a_reset(page, csp, "nobody-by-this-name") == answer  # no enumeration
    assert deployment.services.mail.wait_idle(MAIL_WAIT_SECONDS)
    assert len(deployment.smtp.received) == mailbox, "no mail for a name that is no account"


def ask_for_a_reset(page: Page, csp: CspViolations, username: str) -> str:
    """The Forgot password? form: the name typed, "Send the link"; the page's answer."""
    reach(page, csp, page.get_by_role("heading", name="Forgot your password?"), "the Forgot password? page")
    page.get_by_label("Username").fill(username)
    page.get_by_role("button", name="Send the link").click()
    status = page.get_by_role("status")
    reach(page, csp, status, "the Forgot password? answer")
    expect(status).to_contain_text("a link to reset its password is on its way")
    return page.locator("main").inner_text()


def test_a_link_confirmed_in_one_browser_is_refused_in_another_and_the_first_finishes(
    page: Page, csp: CspViolations, other: OtherBrowser, deployment: Deployment
) -> None:
    deployment.new_user("cleo", password=False)
    link = deployment.link("cleo", "invite", mailed=False)
    open_link(page, csp, link.url, "Set up your account", "cleo")
    new = page.get_by_label("New password", exact=True)
    reach(page, csp, new, "the link's password page")
    password_page = page.url

    statuses = document_statuses(other.page)
    open_link(other.page, other.csp, link.url, "Set up your account", "cleo")  # its GET still shows the page
    reach(other.page, other.csp, other.page.get_by_role("heading", name="We could not continue"), "the refusal")
    expect(other.page.get_by_role("alert")).to_contain_text("This link was confirmed in another browser.")
    assert statuses[-1][1] == 403, statuses
    other.page.goto(password_page)  # the first browser's next page, seen over a shoulder
    expect(other.page.get_by_role("alert")).to_contain_text("confirmed in another browser")
    assert statuses[-1][1] == 403, statuses

    choose_password(page, csp)
    at_account(page, csp, "cleo")
    refused = [e for e in deployment.audit("cleo") if e.kind == "link.refused"]
    assert [(e.detail["reason"], e.detail["at"]) for e in refused] == [
        ("other_browser", "confirm"),
        ("other_browser", "use"),
    ], [e.detail for e in refused]
    assert deployment.link_row(link.link_id).used_at is not None


def test_a_mailed_address_verification_confirms_the_address(
    page: Page, csp: CspViolations, deployment: Deployment
) -> None:
    deployment.new_user("vic", verified=False)
    link = deployment.link("vic", "verify", mailed=True)
    open_link(page, csp, link.url, "Confirm your e-mail address", "vic")
    reach(page, csp, page.get_by_role("heading", name="Address confirmed"), "the page saying it is done")
    expect(page.locator("main")).to_contain_text("The e-mail address of vic is confirmed.")

    assert deployment.user("vic").email_verified
    events = deployment.audit("vic")
    assert only(events, "email.verified").detail["link_id"] == link.link_id
    assert only(events, "link.used").detail["link_kind"] == "verify"


def test_with_the_mail_server_down_forgot_password_answers_at_once_and_the_failure_is_audited(
    page: Page, csp: CspViolations, tmp_path: Path
) -> None:
    """Another deployment whose smtp_url is a loopback port nobody listens on."""
    port, closed = free_port(), free_port()
    env = sqlite_environment(tmp_path / "idp", port, "")
    env.pop("IDP_CLIENTS_FILE")
    run_cli(env, "db", "upgrade")
    app = create_app(
        mail_settings(env, f"smtp://127.0.0.1:{closed}?starttls=off"), mail_retry_delays_seconds=FAST_RETRIES
    )
    services: Services = app.state.services
    with services.sessions.begin() as db:
        user_id = add_user(
            db, username="dora", email="dora@example.com", name="Dora", password_hash=None, email_verified=True
        ).id
    with serving(app, port):
        page.goto(f"http://localhost:{port}/login/forgot")
        started = time.monotonic()
        ask_for_a_reset(page, csp, "dora")
        elapsed = time.monotonic() - started
        assert elapsed < ANSWERS_AT_ONCE_SECONDS, f"the page waited {elapsed:.1f} s on SMTP"
        assert services.mail.wait_idle(MAIL_WAIT_SECONDS)
        with services.sessions() as db:
            query = select(AuditEvent).where(AuditEvent.user_id == user_id).order_by(AuditEvent.id)
            events = list(db.scalars(query))
            db.expunge_all()
    assert kinds(events) == ["user.added", "password.reset_requested", "mail.failed"], kinds(events)
    failed = events[-1]
    assert failed.outcome == "failure"
    assert failed.detail == {"mail": "link_reset", "attempts": 3, "reason": "connection_failed"}, failed.detail
