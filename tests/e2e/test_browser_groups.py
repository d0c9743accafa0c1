"""Groups and per-application access (issue 17), end to end in Debian's Chromium: each
journey goes from the RP's redirect to what the RP's redirect_uri receives. Shop lets in
only the `staff` group (its clients file names it); Portal is open to everyone. A member
signs in to Shop; a non-member is refused right after the password (no second factor, no
session), by single sign-on and by prompt=none; a group's minimum (mfa, phr) raises what an
app that asks for nothing gets, through enrolment, a step-up, or a passkey, and a member
without a passkey is sent back with unmet_authentication_requirements.

One idp built in this process (groups added with the `idp` CLI before it syncs the clients
file, members added with idp.groups), served by uvicorn; one user per journey; pyotp as the
user's authenticator app; Chromium's virtual WebAuthn authenticator as their device; every
journey fails on any Content-Security-Policy violation."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
import uvicorn
from playwright.sync_api import Locator, Page, expect
from sqlalchemy import select
from starlette.applications import Starlette

from idp.app import create_app
from idp.db.models import AuditEvent, User
from idp.groups import add_members
from idp.settings import load_settings
from idp.users import add_user
from idp.web.services import Services
from tests.support.csp import CspViolations
from tests.support.hosted_pages import (
    BACKUP_CODE_FORMAT,
    add_passkey,
    allow,
    code_field,
    passkey_button,
    password_field,
    sign_in,
    submit_form_of,
    visited_paths,
)
from tests.support.idp_server import sqlite_environment
from tests.support.journeys import (
    SCOPE,
    Authorization,
    Expected,
    IdToken,
    RelyingParty,
    RelyingPartySite,
    VirtualAuthenticator,
    arrive,
    assert_id_token,
    document_statuses,
    end_of_session,
    reach,
    serving_relying_party_site,
    session_cookie,
    virtual_authenticator,
)
from tests.support.processes import free_port, run_cli

pytestmark = pytest.mark.browser

PASSWORD = "a long passphrase for the groups journeys"
STAFF = "staff"  # Shop's allowed_groups
ADMINS = "admins"  # min_acr mfa
VAULT = "vault"  # min_acr phr
RETURN = "Return to the application"
PWD = Expected("pwd", frozenset({"pwd"}))
MFA = Expected("mfa", frozenset({"pwd", "otp", "mfa"}))


# --- the deployment: idp in this process, Shop (staff only) and Portal (open) -----------------------


def clients_toml(site: RelyingPartySite, client_secrets: dict[str, str]) -> str:
    def client(client_id: str, name: str, extra: str) -> str:
        return f"""\
[[clients]]
client_id = "{client_id}"
client_name = "{name}"
client_secret = "{client_secrets[client_id]}"
redirect_uris = ["{site.redirect_uri}"]
grant_types = ["authorization_code"]
token_endpoint_auth_method = "client_secret_basic"
scope = "{SCOPE}"
{extra}
"""

    return client("shop", "Shop", f'allowed_groups = ["{STAFF}"]\n') + client(
        "portal", "Portal", "first_party = true\n"
    )


@dataclass(frozen=True)
class Deployment:
    issuer: str
    app: Starlette
    shop: RelyingParty  # allowed_groups = ["staff"]; asks for consent
    portal: RelyingParty  # open to everyone; first party (no consent page)

    @property
    def services(self) -> Services:
        return self.app.state.services  # type: ignore[no-any-return]

    def new_user(self, username: str, *, groups: tuple[str, ...] = (), totp: bool = False) -> None:
        """A user with PASSWORD, in `groups`, with a confirmed authenticator app if `totp`."""
        services = self.services
        with services.sessions.begin() as db:
            user = add_user(
                db,
                username=username,
                email=f"{username}@example.com",
                name=username.title(),
                password_hash=services.hashing.hash(PASSWORD),
            )
            if totp:
                secret = services.factors.begin_totp(db, user.id)
                assert services.factors.confirm_totp(db, user.id, pyotp.TOTP(secret).now()).ok
            for group in groups:
                add_members(db, group, [username])

    def join(self, group: str, username: str) -> None:
        with self.services.sessions.begin() as db:
            assert add_members(db, group, [username]) == (username,)

    def refusals(self, username: str) -> list[AuditEvent]:
        """The `access.refused` events of one user, oldest first."""
        with self.services.sessions() as db:
            user_id = db.scalar(select(User.id).where(User.username == username))
            assert user_id is not None, username
            query = select(AuditEvent).where(AuditEvent.kind == "access.refused", AuditEvent.user_id == user_id)
            return list(db.scalars(query.order_by(AuditEvent.id)))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The admin's order: database, groups (`idp group add`), then the app, which syncs the
    clients file naming `staff`; uvicorn on a free port, the RPs' site on another origin."""
    workdir: Path = tmp_path_factory.mktemp("groups")
    port = free_port()
    client_secrets = {"shop": secrets.token_urlsafe(36), "portal": secrets.token_urlsafe(36)}
    with serving_relying_party_site() as site:
        env = sqlite_environment(workdir / "idp", port, clients_toml(site, client_secrets))
        run_cli(env, "db", "upgrade")
        run_cli(env, "group", "add", STAFF, "--display-name", "All staff")
        run_cli(env, "group", "add", ADMINS, "--min-acr", "mfa")
        run_cli(env, "group", "add", VAULT, "--min-acr", "phr")
        app = create_app(load_settings(environ=env))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while not server.started:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.05)
            issuer = f"http://localhost:{port}"
            yield Deployment(
                issuer,
                app,
                RelyingParty.discover(issuer, "shop", client_secrets["shop"], site),
                RelyingParty.discover(issuer, "portal", client_secrets["portal"], site),
            )
        finally:
            server.should_exit = True
            thread.join(timeout=10)


@pytest.fixture
def csp(page: Page) -> Iterator[CspViolations]:
    """Every CSP violation in any page of this journey's browser context fails it."""
    recorder = CspViolations.record(page.context)
    yield recorder
    recorder.assert_none("during the journey")


# --- what the user sees, what the RP receives ------------------------------------------------------


def at_rp(rp: RelyingParty) -> Callable[[str], bool]:
    return lambda url: url.startswith(rp.site.redirect_uri + "?")


def sign_in_at(page: Page, csp: CspViolations, rp: RelyingParty, authorization: Authorization, username: str) -> None:
    page.goto(authorization.url)
    reach(page, csp, password_field(page), f"the login page for {rp.client_id}")
    sign_in(page, username, PASSWORD)


def finish_at_rp(page: Page, csp: CspViolations, rp: RelyingParty, authorization: Authorization) -> IdToken:
    """The RP's redirect_uri received a code (its server logged the same query); redeemed."""
    arrive(page, csp, at_rp(rp), f"{rp.client_id}'s redirect_uri")
    query = urlsplit(page.url).query
    assert rp.site.callbacks[-1] == query, rp.site.callbacks
    return rp.redeem(authorization, query)


def only_button(page: Page) -> Locator:
    """The page's one button (a link styled as one, or a button), which must be "Return to
    the application"."""
    main = page.locator("main")
    controls = main.locator("a.button, button, input[type=submit]")
    expect(controls).to_have_count(1)
    back = main.get_by_role("link", name=RETURN, exact=True)
    expect(back).to_be_visible()
    return back


def assert_error_at_rp(
    page: Page, csp: CspViolations, rp: RelyingParty, authorization: Authorization, error: str
) -> None:
    """The browser is at the RP's redirect_uri with `error`, the request's state, our iss and
    no code; the RP's server received exactly that."""
    arrive(page, csp, at_rp(rp), f"{rp.client_id}'s redirect_uri with {error}")
    query = urlsplit(page.url).query
    assert rp.site.callbacks[-1] == query, rp.site.callbacks
    params = parse_qs(query, strict_parsing=True)
    assert params["error"] == [error], params
    assert params["state"] == [authorization.state], params
    assert params["iss"] == [rp.issuer], params  # RFC 9207
    assert "code" not in params, params


def assert_refused(page: Page, csp: CspViolations, statuses: list[tuple[str, int]], app: str) -> Locator:
    """The refusal page: 403, names the app, its one button goes back."""
    reach(page, csp, page.get_by_role("heading", name="We could not continue"), f"the page refusing {app}")
    expect(page.get_by_role("alert")).to_contain_text(f"Your account may not use {app}.")
    if statuses:  # a refusal reached by script (the passkey sign-in) has no status of its own to check
        assert statuses[-1][1] == 403, statuses
    return only_button(page)


def passkey_added_on_account(
    page: Page, csp: CspViolations, deployment: Deployment, username: str
) -> VirtualAuthenticator:
    """Signs in on /account with the password and registers a passkey on this browser's
    virtual authenticator (device-bound, user-verifying); the session stays."""
    authenticator = virtual_authenticator(page)
    page.goto(f"{deployment.issuer}/account")
    reach(page, csp, password_field(page), "the login page for /account")
    sign_in(page, username, PASSWORD)
    reach(page, csp, page.get_by_role("button", name="Add a passkey"), "/account")
    add_passkey(page, f"{username.title()}'s laptop")
    assert len(authenticator.credentials()) == 1
    return authenticator


# --- the journeys ------------------------------------------------------------------------------------


def test_a_member_of_the_allowed_group_signs_in_and_the_rp_gets_a_code(
    page: Page, csp: CspViolations, deployment: Deployment
) -> None:
    deployment.new_user("sam", groups=(STAFF,))
    shop = deployment.shop
    authorization = shop.authorization()
    since = time.time()
    sign_in_at(page, csp, shop, authorization, "sam")
    reach(page, csp, page.get_by_role("heading", name="Allow Shop?"), "Shop's consent page (first visit)")
    allow(page)
    token = finish_at_rp(page, csp, shop, authorization)
    assert_id_token(token, PWD, since=since)
    assert session_cookie(page) is not None


def test_a_non_member_is_refused_after_the_password_with_no_second_factor_and_no_session(
    page: Page, csp: CspViolations, deployment: Deployment
) -> None:
    deployment.new_user("rita", totp=True)  # a second factor she is never asked for here
    shop = deployment.shop
    authorization = shop.authorization()
    statuses, paths = document_statuses(page), visited_paths(page)
    sign_in_at(page, csp, shop, authorization, "rita")
    back = assert_refused(page, csp, statuses, "Shop")
    expect(code_field(page)).to_have_count(0)
    assert session_cookie(page) is None
    back.click()
    assert_error_at_rp(page, csp, shop, authorization, "access_denied")
    assert not any(path.startswith("/login/") for path in paths), paths  # no step after the password
    assert session_cookie(page) is None
    [refused] = deployment.refusals("rita")
    assert refused.client_id == "shop" and refused.detail["reason"] == "not_in_allowed_groups", refused.detail


def test_single_sign_on_from_an_open_app_is_refused_at_the_restricted_one_and_prompt_none_too(
    page: Page, csp: CspViolations, deployment: Deployment
) -> None:
    deployment.new_user("sol")
    portal, shop = deployment.portal, deployment.shop
    first = portal.authorization()
    since = time.time()
    sign_in_at(page, csp, portal, first, "sol")
    portal_token = finish_at_rp(page, csp, portal, first)
    assert_id_token(portal_token, PWD, since=since)
    cookie = session_cookie(page)
    assert cookie is not None

    refused = shop.authorization()
    statuses = document_statuses(page)
    paths = visited_paths(page)
    page.goto(refused.url)
    back = assert_refused(page, csp, statuses, "Shop")
    assert paths == ["/authorize"], paths  # at once: no login page
    back.click()
    assert_error_at_rp(page, csp, shop, refused, "access_denied")
    assert session_cookie(page) == cookie  # the IdP session stays: it serves Portal

    silent = shop.authorization(prompt="none")
    statuses.clear()
    page.goto(silent.url)
    assert_error_at_rp(page, csp, shop, silent, "access_denied")
    assert [urlsplit(url).path for url, _ in statuses] == ["/authorize", "/callback"], statuses
    assert statuses[0][1] in (302, 303), statuses


def test_a_group_minimum_of_mfa_enrols_a_user_without_totp_and_the_rp_gets_mfa(
    page: Page, csp: CspViolations, deployment: Deployment
) -> None:
    deployment.new_user("enid", groups=(ADMINS,))
    portal = deployment.portal
    authorization = portal.authorization()  # asks for nothing
    since = time.time()
    sign_in_at(page, csp, portal, authorization, "enid")
    enrol_totp(page, csp)
    assert_id_token(finish_at_rp(page, csp, portal, authorization), MFA, since=since)


def enrol_totp(page: Page, csp: CspViolations) -> None:
    """The chain's enrolment step: the key shown, a real code from it, the 10 backup codes."""
    reach(page, csp, page.get_by_role("heading", name="Set up two-step verification"), "the enrolment step")
    assert urlsplit(page.url).path == "/login/enrol_totp", page.url
    expect(password_field(page)).to_have_count(0)
    secret = page.locator("[data-totp-secret]").get_attribute("data-totp-secret") or ""
    assert re.fullmatch(r"[A-Z2-7]{16,}", secret), secret
    code_field(page).fill(pyotp.TOTP(secret).now())
    submit_form_of(page, code_field(page))
    reach(page, csp, page.get_by_role("heading", name="Save your backup codes"), "the backup codes")
    codes = BACKUP_CODE_FORMAT.findall(page.locator("main").inner_text())
    assert len(codes) == 10 and len(set(codes)) == 10, codes
    page.get_by_role("link", name="I have saved them").click()


def test_joining_an_mfa_group_steps_up_a_password_session_through_enrolment(
    page: Page, csp: CspViolations, deployment: Deployment
) -> None:
    """Her session (pwd, no second factor) served Portal; once in `admins` it no longer does
    (prompt=none: interaction_required), and the next request steps the same session up.
    Setting up a factor needs a recent password (idp/login/flow.py: a step-up's password
    credit may be hours old), so the chain asks it, then the enrolment."""
    deployment.new_user("stella")
    portal = deployment.portal
    first = portal.authorization()
    since = time.time()
    sign_in_at(page, csp, portal, first, "stella")
    before = finish_at_rp(page, csp, portal, first)
    assert_id_token(before, PWD, since=since)
    control = portal.authorization(prompt="none")
    page.goto(control.url)
    assert finish_at_rp(page, csp, portal, control).claims["acr"] == "pwd"  # the session serves Portal at pwd

    deployment.join(ADMINS, "stella")
    silent = portal.authorization(prompt="none")
    page.goto(silent.url)
    assert_error_at_rp(page, csp, portal, silent, "interaction_required")

    again = portal.authorization()
    sign_in_at(page, csp, portal, again, "stella")
    enrol_totp(page, csp)
    after = finish_at_rp(page, csp, portal, again)
    assert_id_token(after, MFA, since=since)
    assert after.sid == before.sid  # the same session, stepped up
    assert after.claims["sub"] == before.claims["sub"]


def test_a_group_minimum_of_phr_asks_a_member_for_their_passkey(
    page: Page, csp: CspViolations, deployment: Deployment
) -> None:
    deployment.new_user("pat")
    authenticator = passkey_added_on_account(page, csp, deployment, "pat")
    end_of_session(page)
    deployment.join(VAULT, "pat")

    portal = deployment.portal
    authorization = portal.authorization()  # asks for nothing
    since = time.time()
    authenticator.touched(False)  # the login page's autofill request stays unanswered: she types her password
    sign_in_at(page, csp, portal, authorization, "pat")
    reach(page, csp, page.get_by_role("heading", name="Use your passkey"), "the passkey step")
    expect(password_field(page)).to_have_count(0)
    authenticator.touched(True)
    page.get_by_role("button", name="Use your passkey").click()
    token = finish_at_rp(page, csp, portal, authorization)
    claims = token.claims
    assert claims["acr"] == "phr", claims
    assert {"pwd", "hwk", "user", "mfa"} <= set(claims["amr"]) and "swk" not in claims["amr"], claims
    assert int(since) <= token.auth_time


def test_a_group_minimum_of_phr_without_a_passkey_sends_the_user_to_an_administrator(
    page: Page, csp: CspViolations, deployment: Deployment
) -> None:
    deployment.new_user("nora", groups=(VAULT,))
    portal = deployment.portal
    authorization = portal.authorization()
    statuses = document_statuses(page)
    sign_in_at(page, csp, portal, authorization, "nora")
    reach(page, csp, page.get_by_role("heading", name="We could not continue"), "the page about the passkey")
    expect(page.get_by_role("alert")).to_contain_text("Ask an administrator for an enrolment link.")
    assert statuses[-1][1] == 403, statuses
    only_button(page).click()
    assert_error_at_rp(page, csp, portal, authorization, "unmet_authentication_requirements")


def test_a_non_member_signing_in_with_a_passkey_is_refused_the_same_way(
    page: Page, csp: CspViolations, deployment: Deployment
) -> None:
    """README: the check runs "right after the password or passkey identifies the user", and
    a refused user sees the page naming the app, whose only button returns access_denied."""
    deployment.new_user("rex")
    authenticator = passkey_added_on_account(page, csp, deployment, "rex")
    end_of_session(page)

    shop = deployment.shop
    authorization = shop.authorization()
    authenticator.touched(False)  # the autofill request waits: he clicks the button instead
    page.goto(authorization.url)
    reach(page, csp, passkey_button(page), "the login page's passkey button")
    page.wait_for_load_state("networkidle")
    authenticator.touched(True)
    # the answer, not only the request: its audit row is committed once it has come back
    # (networkidle, reached before the click, would not wait for the verification in flight)
    with page.expect_response(lambda r: urlsplit(r.url).path == "/login/passkey/verify"):
        passkey_button(page).click()
    authenticator.touched(False)  # one answer: not the autofill request the page starts again
    page.wait_for_load_state("networkidle")
    [refused] = deployment.refusals("rex")  # idp did refuse him, and audited it
    assert refused.client_id == "shop" and refused.detail["reason"] == "not_in_allowed_groups", refused.detail
    back = assert_refused(page, csp, [], "Shop")
    assert session_cookie(page) is None
    back.click()
    assert_error_at_rp(page, csp, shop, authorization, "access_denied")
