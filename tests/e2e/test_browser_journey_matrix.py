"""The journey matrix (issue 14): every way in x every way of proving who you are, each
ending with RP-Initiated Logout, in Debian's Chromium against a real `idp serve`, the RPs on
another origin, and every journey failing on any Content-Security-Policy violation.

Rows, what the RP's request meets at idp:
  first-consent  Shop, never used by this person: the consent page comes after sign-in
  returning      Shop, consent stored by an earlier sign-in whose IdP session has ended
  first-party    Portal (first_party = true): never a consent page
  prompt-login   Shop with prompt=login, while this browser has a session: sign in again
  max-age-0      Shop with max_age=0, while this browser has a session: sign in again
Columns, how the person signs in:
  password              the password (acr pwd, amr pwd)
  password+totp         the password, then a code from an authenticator app (mfa: pwd otp mfa)
  password+backup-code  the password, then a backup code on the code step (mfa: pwd otp mfa)
  passkey               the login page's passkey button, usernameless (phr: hwk user mfa)
  step-up-mfa-phr       from a password-only session, the RP asks for acr_values=mfa (only the
                        code is asked for; the session keeps its sid), then acr_values=phr
                        (only the passkey). In the re-authentication rows the password comes
                        first each time: password + code, then password + passkey.
Logout, the third dimension: every sign-in cell ends once with `logout-confirmed` (client_id
only: idp asks "Sign out?") and once with `logout-by-hint` (id_token_hint naming this
session: straight back to the RP): 5 x 5 x 2 = 50 journeys.

Each sign-in ends on the RP's page with a code that the RP redeems and an ID token PyJWT
verifies against JWKS (iss, aud, exp, nonce), with acr, amr, auth_time and sid asserted as
that journey must produce them; each logout ends on the RP's post-logout page with its
state and the session cookie gone, and then no session cookie value the browser held during
the journey (the one it started with, each one a sign-in or step-up issued) may still be a
live IdP session when replayed (prompt=none must answer login_required).

Speed: one idp server and one RP site per module, one browser per module, a fresh browser
context per journey, and a fresh user per journey, so no journey ever waits for a TOTP time
step (tests/support/journeys.py's TotpApp). Second factors are enrolled where a person
does it, on /account; pages are driven only by the contract's selectors
(tests/support/hosted_pages.py) and by following redirects, starting at the RP's URLs.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import unavailable
from tests.support.csp import CspViolations
from tests.support.hosted_pages import (
    add_passkey,
    allow,
    allow_button,
    code_field,
    confirm_sign_out,
    confirm_totp,
    continue_after_backup_code,
    enter_backup_code,
    enter_code,
    passkey_button,
    password_field,
    set_up_totp,
    sign_in,
    visited_paths,
)
from tests.support.idp_server import LocalIdp, serving_idp
from tests.support.journeys import (
    SESSION_COOKIE,
    Expected,
    IdToken,
    RelyingParty,
    TotpApp,
    VirtualAuthenticator,
    arrive,
    assert_id_token,
    clients_toml,
    end_of_session,
    reach,
    serving_relying_party_site,
    session_cookie,
    virtual_authenticator,
)

pytestmark = pytest.mark.browser

OATHTOOL = "/usr/bin/oathtool"
PWD = Expected("pwd", frozenset({"pwd"}))
MFA = Expected("mfa", frozenset({"pwd", "otp", "mfa"}))
PHR = Expected("phr", frozenset({"hwk", "user", "mfa"}))
PHR_STEPPED_UP_FROM_MFA = Expected("phr", frozenset({"pwd", "otp", "hwk", "user", "mfa"}))
PHR_AFTER_PASSWORD = Expected("phr", frozenset({"pwd", "hwk", "user", "mfa"}))


@dataclass(frozen=True)
class Row:
    name: str
    client_id: str
    consent_page: bool  # the journey's (first) authorization shows the consent page
    signed_in_at_shop_before: bool  # set-up: a password sign-in at Shop with consent (stored consent, a session)
    session_kept: bool  # the set-up's session is still this browser's when the journey starts
    params: dict[str, str] = field(default_factory=dict)  # what the RP adds to its request

    @property
    def reauthenticates(self) -> bool:
        return bool(self.params)


@dataclass(frozen=True)
class Column:
    name: str
    totp: bool
    passkey: bool
    expected: Expected | None  # None: two sign-ins (the step-ups)

    @property
    def step_up(self) -> bool:
        return self.expected is None


ROWS = (
    Row("first-consent", "shop", consent_page=True, signed_in_at_shop_before=False, session_kept=False),
    Row("returning", "shop", consent_page=False, signed_in_at_shop_before=True, session_kept=False),
    Row("first-party", "portal", consent_page=False, signed_in_at_shop_before=False, session_kept=False),
    Row(
        "prompt-login",
        "shop",
        consent_page=False,
        signed_in_at_shop_before=True,
        session_kept=True,
        params={"prompt": "login"},
    ),
    Row(
        "max-age-0",
        "shop",
        consent_page=False,
        signed_in_at_shop_before=True,
        session_kept=True,
        params={"max_age": "0"},
    ),
)
COLUMNS = (
    Column("password", totp=False, passkey=False, expected=PWD),
    Column("password+totp", totp=True, passkey=False, expected=MFA),
    Column("password+backup-code", totp=True, passkey=False, expected=MFA),
    Column("passkey", totp=False, passkey=True, expected=PHR),
    Column("step-up-mfa-phr", totp=True, passkey=True, expected=None),
)
LOGOUTS = ("logout-confirmed", "logout-by-hint")
CELLS = [
    pytest.param(row, column, logout, id=f"{row.name} x {column.name} x {logout}")
    for row in ROWS
    for column in COLUMNS
    for logout in LOGOUTS
]


# --- fixtures ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    idp: LocalIdp
    rps: dict[str, RelyingParty]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One idp (clients Shop and Portal, both with a post_logout_redirect_uri) and the RPs'
    site on another origin, for the whole matrix; every journey brings its own user."""
    client_secrets = {"shop": secrets.token_urlsafe(36), "portal": secrets.token_urlsafe(36)}
    with (
        serving_relying_party_site() as site,
        serving_idp(tmp_path_factory.mktemp("idp-matrix"), clients_toml(site, client_secrets), users=()) as idp,
    ):
        rps = {
            client_id: RelyingParty.discover(idp.issuer, client_id, secret, site)
            for client_id, secret in client_secrets.items()
        }
        yield Deployment(idp, rps)


@pytest.fixture(scope="module")
def oathtool() -> str:
    if not Path(OATHTOOL).is_file():
        unavailable(f"{OATHTOOL} is missing: install Debian's oathtool package")
    return OATHTOOL


@pytest.fixture
def csp(page: Page) -> CspViolations:
    return CspViolations.record(page.context)


# --- one person's journey ------------------------------------------------------------------------


@dataclass
class Journey:
    page: Page
    csp: CspViolations
    deployment: Deployment
    username: str
    password: str
    oathtool: str
    authenticator: VirtualAuthenticator | None
    totp: TotpApp | None = None
    backup_codes: list[str] = field(default_factory=list)
    cookies_held: dict[str, str] = field(default_factory=dict)  # session cookie value -> when the browser had it

    @property
    def issuer(self) -> str:
        return self.deployment.idp.issuer

    # -- set-up: what the person did before this journey -------------------------------------------

    def prepare(self, row: Row, column: Column) -> IdToken | None:
        """Stored consent, enrolled factors and the session the row and column need; the
        earlier ID token when there was a sign-in at Shop."""
        earlier = None
        if row.signed_in_at_shop_before:
            earlier = self.authorize(
                self.deployment.rps["shop"], {}, consent=True, factors=self.password_step, expected=PWD
            )
        if column.totp or column.passkey:
            self.page.goto(f"{self.issuer}/account")  # signed out: the login page, which comes back here
            if earlier is None:
                self.password_step()
            reach(self.page, self.csp, self.page.get_by_role("button", name="Add a passkey"), "/account")
        if column.totp:
            self.totp = TotpApp(self.oathtool, set_up_totp(self.page))
            self.backup_codes = confirm_totp(self.page, self.totp.code())
        if column.passkey and not column.totp:
            assert self.authenticator is not None
            self.authenticator.touched(True)
            add_passkey(self.page, "This laptop")
            self.authenticator.touched(False)
        elif column.passkey:
            self.add_passkey_in_another_sign_in()
        if column.passkey:
            assert self.authenticator is not None and len(self.authenticator.credentials()) == 1
        if not (row.session_kept or column.step_up):
            end_of_session(self.page)
        if row.reauthenticates:
            assert earlier is not None
            while time.time() < earlier.auth_time + 1:  # a second later: a new auth_time tells a new sign-in
                time.sleep(0.05)
        self.cookies_held.clear()  # from here on: the journey's (an ended set-up session may live on, as after expiry)
        self.remember_session_cookie("when the journey began")
        return earlier

    def add_passkey_in_another_sign_in(self) -> None:
        """Adding a passkey once the account has a code needs a sign-in at mfa (issue 15), and
        this journey must keep its password-only session: the person signs in again with
        password and a backup code in another browser window (the app's codes are kept for the
        journey: three per time step at most), adds the passkey there, and the key reaches this
        browser's authenticator as a synced or copied passkey would."""
        assert self.authenticator is not None and self.totp is not None
        context = self.page.context.browser.new_context()  # type: ignore[union-attr]
        context.set_default_timeout(10_000)
        try:
            other = context.new_page()
            elsewhere_csp = CspViolations.record(context)
            device = virtual_authenticator(other)
            other.goto(f"{self.issuer}/account")
            reach(other, elsewhere_csp, password_field(other), "the login page")
            sign_in(other, self.username, self.password)
            reach(other, elsewhere_csp, code_field(other), "the code step")
            enter_backup_code(other, self.backup_codes.pop())
            continue_after_backup_code(other)
            reach(other, elsewhere_csp, other.get_by_role("button", name="Add a passkey"), "/account")
            add_passkey(other, "This laptop")
            (credential,) = device.credentials()
            self.authenticator.add(credential)
            elsewhere_csp.assert_none()
        finally:
            context.close()

    def remember_session_cookie(self, when: str) -> None:
        cookie = session_cookie(self.page)
        if cookie is not None:
            self.cookies_held.setdefault(cookie, when)

    # -- the journey's sign-ins ------------------------------------------------------------------

    def sign_in(self, row: Row, column: Column) -> list[IdToken]:
        rp = self.deployment.rps[row.client_id]
        if column.expected is not None:
            factors = {
                "password": self.password_step,
                "password+totp": self.password_and_code,
                "password+backup-code": self.password_and_backup_code,
                "passkey": self.passkey_on_login_page,
            }[column.name]
            return [self.authorize(rp, row.params, consent=row.consent_page, factors=factors, expected=column.expected)]
        if row.reauthenticates:
            mfa = self.authorize(
                rp,
                {**row.params, "acr_values": "mfa"},
                consent=row.consent_page,
                factors=self.password_and_code,
                expected=MFA,
            )
            phr = self.authorize(
                rp,
                {**row.params, "acr_values": "phr"},
                consent=False,
                factors=self.password_then_passkey_step,
                expected=PHR_AFTER_PASSWORD,
            )
        else:
            mfa = self.authorize(
                rp, {"acr_values": "mfa"}, consent=row.consent_page, factors=self.code_step_only, expected=MFA
            )
            phr = self.authorize(
                rp,
                {"acr_values": "phr"},
                consent=False,
                factors=self.passkey_step_only,
                expected=PHR_STEPPED_UP_FROM_MFA,
            )
            assert phr.sid == mfa.sid, (mfa.claims, phr.claims)  # one session, stepped up twice
        return [mfa, phr]

    def authorize(
        self,
        rp: RelyingParty,
        params: dict[str, str],
        *,
        consent: bool,
        factors: Callable[[], None],
        expected: Expected,
    ) -> IdToken:
        """From the RP's authorization URL: the factors, the consent page if `consent` (and
        only then), the RP's callback; the code redeemed and the ID token checked."""
        authorization = rp.authorization(**params)
        paths = visited_paths(self.page)
        since = time.time()
        self.page.goto(authorization.url)
        factors()
        if consent:
            reach(self.page, self.csp, allow_button(self.page), "the consent page")
            allow(self.page)
        arrive(
            self.page,
            self.csp,
            lambda url: url.startswith(rp.site.redirect_uri + "?"),
            f"{rp.client_id}'s redirect_uri",
        )
        expect(self.page.locator("body")).to_contain_text("Signed in.")  # the RP's own page answered
        if self.authenticator is not None:
            self.authenticator.touched(False)  # until the person's next passkey request
        token = rp.redeem(authorization, urlsplit(self.page.url).query)
        assert ("/consent" in paths) is consent, paths
        assert_id_token(token, expected, since=since)
        self.remember_session_cookie(f"after the sign-in at {rp.client_id} with {params or 'no extra parameters'}")
        return token

    # -- what the person does on idp's pages -------------------------------------------------------

    def password_step(self) -> None:
        reach(self.page, self.csp, password_field(self.page), "the login page")
        sign_in(self.page, self.username, self.password)

    def password_and_code(self) -> None:
        self.password_step()
        self.code_step_only()

    def password_and_backup_code(self) -> None:
        self.password_step()
        reach(self.page, self.csp, code_field(self.page), "the code step")
        enter_backup_code(self.page, self.backup_codes[0].lower())  # as a person might type it
        continue_after_backup_code(self.page)

    def code_step_only(self) -> None:
        assert self.totp is not None
        reach(self.page, self.csp, code_field(self.page), "the code step")
        expect(password_field(self.page)).to_have_count(0)
        enter_code(self.page, self.totp.code())

    def passkey_on_login_page(self) -> None:
        reach(self.page, self.csp, passkey_button(self.page), "the login page's passkey button")
        expect(password_field(self.page)).to_be_visible()  # the login page itself
        expect(self.page.locator("input[name=username]")).to_have_attribute("autocomplete", "username webauthn")
        self.use_passkey()

    def passkey_step_only(self) -> None:
        reach(self.page, self.csp, passkey_button(self.page), "the passkey step")
        expect(password_field(self.page)).to_have_count(0)
        self.use_passkey()

    def password_then_passkey_step(self) -> None:
        self.password_step()
        self.passkey_step_only()

    def use_passkey(self) -> None:
        """The person touches the authenticator for the request the button makes (not for
        the login page's autofill request, which waited untouched since the page loaded)."""
        assert self.authenticator is not None
        self.authenticator.touched(True)
        passkey_button(self.page).click()

    # -- RP-Initiated Logout -----------------------------------------------------------------------

    def log_out(self, kind: str, rp: RelyingParty, last: IdToken) -> None:
        cookie = session_cookie(self.page)
        assert cookie is not None
        self.remember_session_cookie("just before the logout")
        state = secrets.token_urlsafe(16)
        paths = visited_paths(self.page)
        if kind == "logout-confirmed":
            self.page.goto(rp.end_session_url(state))
            reach(
                self.page,
                self.csp,
                self.page.get_by_role("button", name="Sign out", exact=True),
                "the logout confirmation",
            )
            assert session_cookie(self.page) == cookie  # nothing ends before the person confirms
            confirm_sign_out(self.page)
        else:
            self.page.goto(rp.end_session_url(state, id_token_hint=last.raw))
        landing = f"{rp.site.post_logout_redirect_uri}?state={state}"
        arrive(self.page, self.csp, lambda url: url == landing, "the RP's post-logout page")
        expect(self.page.locator("body")).to_contain_text("Signed out.")
        if kind == "logout-by-hint":
            assert paths == ["/logout", "/logged-out"], paths  # tied to the session: no "Sign out?" page
        assert session_cookie(self.page) is None
        for held, when in self.cookies_held.items():
            self.assert_session_over(rp, held, f"the session cookie this browser held {when}")

    def assert_session_over(self, rp: RelyingParty, cookie: str, which: str) -> None:
        """After the sign-out, a session cookie value this browser held, replayed, signs no one
        in (prompt=none: login_required): sign-in events replace the value (DESIGN.md §2) and
        the logout ends what is left."""
        authorization = rp.authorization(prompt="none")
        response = httpx.get(authorization.url, cookies={SESSION_COOKIE: cookie}, follow_redirects=False, timeout=10)
        assert response.status_code in (302, 303), response.text
        location = response.headers["location"]
        assert location.startswith(rp.site.redirect_uri + "?"), location
        params = parse_qs(urlsplit(location).query)
        assert params.get("state") == [authorization.state], params
        outcome = params.get("error", ["a code"])[0]
        assert outcome == "login_required", (
            f"after the logout, {which} is still a live IdP session (prompt=none with it got {outcome}, "
            "not login_required): that session was never ended"
        )


# --- the matrix ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("row", "column", "logout"), CELLS)
def test_journey_ends_at_the_rp_with_the_id_token_it_must_produce_then_logs_out(
    row: Row, column: Column, logout: str, page: Page, csp: CspViolations, deployment: Deployment, oathtool: str
) -> None:
    username, password = f"{row.name}.{column.name}.{logout}", secrets.token_urlsafe(18)
    deployment.idp.cli(
        "user",
        "add",
        username,
        "--email",
        f"{username}@example.com",
        "--name",
        username,
        "--password-stdin",
        stdin=password + "\n",
    )
    authenticator = virtual_authenticator(page) if column.passkey else None
    if authenticator is not None:
        authenticator.touched(False)
    journey = Journey(page, csp, deployment, username, password, oathtool, authenticator)

    earlier = journey.prepare(row, column)
    tokens = journey.sign_in(row, column)

    subjects = {token.claims["sub"] for token in tokens} | ({earlier.claims["sub"]} if earlier else set())
    assert len(subjects) == 1, subjects
    if earlier is not None and row.reauthenticates:
        assert tokens[0].auth_time > earlier.auth_time, (earlier.claims, tokens[0].claims)
    if earlier is not None and not row.session_kept and not column.step_up:
        assert tokens[0].sid != earlier.sid  # that session had ended: a new one
    if earlier is not None and column.step_up and not row.reauthenticates:
        assert tokens[0].sid == earlier.sid  # the step-up upgraded the session the RP knows
    journey.log_out(logout, deployment.rps[row.client_id], tokens[-1])
    csp.assert_none()
