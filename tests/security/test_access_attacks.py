"""Attacks on the state transitions of per-application access control (a client's
allowed_groups, a group's min_acr, the groups claim) and of the token side (refresh rotation
with grace, grant revocation ending access tokens, introspection).

For each piece of state (a login transaction, an IdP session, an authorization code, a
refresh token, a consent, a group membership, a parked request) each test asks who else
could present it, in which order, or twice. The four tests whose docstrings say "Found by
this review" failed when written (a code issued before access ended stayed redeemable)
and pass since the fix; the others passed at once and stay as guards of a security
decision."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import pyotp
import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from idp.app import create_app
from idp.clients_file import parse_clients_toml
from idp.clients_sync import sync_clients
from idp.db.models import Client, Consent, Group, IdpSession, User
from idp.groups import add_group, add_members, remove_members, set_group
from idp.settings import Settings
from idp.state.memory import MemoryStore
from idp.users import disable_user, require_mfa
from tests.conftest import ISSUER
from tests.login.test_chain import at_step, enrol_totp, to_client
from tests.support.clock import ManualClock
from tests.support.rp import (
    SHOP,
    SHOP_REDIRECT,
    AuthRequest,
    decode_id_token,
    follow_to_client,
    form_value,
    query_of,
    redeem,
    refresh,
    sign_in_and_get_code,
    start,
    submit_login,
    tokens_for,
)
from tests.support.seed import PASSWORD, _toml_with_inline_jwks, seed

GRACE_SECONDS = 5
ONLINE = "openid profile email"
OFFLINE = "openid profile email offline_access"
PORTAL = AuthRequest(client_id="portal", redirect_uri="https://portal.example/cb", scope=ONLINE)
CODE_IN = re.compile(r"[?&]code=")


# ---- helpers ---------------------------------------------------------------------------


def configure(client: TestClient, client_id: str, **changes: Any) -> None:
    """The client's stored config changed (what a clients file sync does), and reloaded."""
    services = client.app.state.services
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == client_id))
        db.execute(update(Client).where(Client.id == row.id).values(config={**row.config, **changes}))
    services.oidc.clients.reload()


def make_groups(client: TestClient, *specs: tuple[str, str | None, list[str]]) -> None:
    with client.app.state.services.sessions.begin() as db:
        for name, min_acr, members in specs:
            add_group(db, name, min_acr=min_acr)
            if members:
                add_members(db, name, members)


def take_out(client: TestClient, group: str, *usernames: str) -> Any:
    """`idp group remove-member GROUP USER…`."""
    with client.app.state.services.sessions.begin() as db:
        return remove_members(db, group, list(usernames))


def put_in(client: TestClient, group: str, *usernames: str) -> None:
    with client.app.state.services.sessions.begin() as db:
        add_members(db, group, list(usernames))


def set_min_acr(client: TestClient, group: str, level: str) -> None:
    """`idp group set GROUP --min-acr LEVEL`."""
    with client.app.state.services.sessions.begin() as db:
        set_group(db, group, min_acr=level)


def userinfo(client: TestClient, access_token: str) -> Any:
    return client.get("/userinfo", headers={"Authorization": f"Bearer {access_token}"})


def introspect(client: TestClient, token: str) -> dict[str, Any]:
    response = client.post("/introspect", data={"token": token}, auth=SHOP)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def refused(response: Any) -> bool:
    return response.status_code == 400 and response.json()["error"] == "invalid_grant"


def dead(client: TestClient, tokens: dict[str, Any]) -> bool:
    """Nothing of the grant works any more: userinfo, introspection and refresh all refuse."""
    access_dead = userinfo(client, tokens["access_token"]).status_code == 401
    assert introspect(client, tokens["access_token"])["active"] is not access_dead, (
        "userinfo and introspection disagree"
    )
    if "refresh_token" in tokens:
        assert introspect(client, tokens["refresh_token"]) == {"active": False}
    return access_dead


def no_code(client: TestClient, response: Any) -> Any:
    """Follows the browser's GET redirects inside idp (no form is submitted) and checks that
    no authorization code reached the RP: not in a redirect, not in a page's link or form."""
    for _ in range(6):
        location = response.headers.get("location") or ""
        if not location.startswith("/"):
            break
        response = client.get(location, follow_redirects=False)
    assert not CODE_IN.search(response.headers.get("location") or ""), response.headers
    assert not CODE_IN.search(response.text.replace("&amp;", "&")), response.text
    assert 'name="code" value=' not in response.text  # a form_post page
    return response


def after_redemption(client: TestClient, answer: Any) -> str:
    """What a redemption that should have been refused gave, for the failure message."""
    if answer.status_code != 200:
        return f"{answer.status_code} {answer.text}"
    late = answer.json()
    return (
        f"redeemed: 200; userinfo {userinfo(client, late['access_token']).status_code}; "
        f"refresh {refresh(client, late['refresh_token']).status_code}"
    )


def sessions_of(client: TestClient, username: str) -> list[IdpSession]:
    with client.app.state.services.sessions() as db:
        uid = db.scalar(select(User.id).where(User.username == username))
        return list(db.scalars(select(IdpSession).where(IdpSession.user_id == uid, IdpSession.ended_at.is_(None))))


def page_form(client: TestClient, location: str) -> dict[str, str]:
    """The csrf token and tx of a step's page, read now, to be posted later."""
    page = client.get(location)
    assert page.status_code == 200, page.text
    return {"csrf_token": form_value(page.text, "csrf_token"), "tx": form_value(page.text, "tx")}


def post_step(client: TestClient, location: str, form: dict[str, str], **fields: str) -> Any:
    return client.post(location.split("?")[0], data={**form, **fields}, follow_redirects=False)


def totp_now(client: TestClient, secret: str, step: int) -> str:
    return pyotp.TOTP(secret).at(at_step(client, step))


@pytest.fixture
def staff_only(client: TestClient) -> TestClient:
    """shop: members of staff only; alice is in staff, bob is not."""
    make_groups(client, ("staff", None, ["alice"]))
    configure(client, "shop", allowed_groups=["staff"])
    return client


@pytest.fixture
def graced(settings: Settings, clock: ManualClock) -> Iterator[TestClient]:
    """An app with IDP_REFRESH_GRACE_SECONDS set, shop restricted to staff (alice's group)."""
    app = create_app(
        dataclasses.replace(settings, refresh_grace_seconds=GRACE_SECONDS), store=MemoryStore(), clock=clock
    )
    seed(app.state.services)
    with TestClient(app, base_url=ISSUER) as client:
        make_groups(client, ("staff", None, ["alice"]))
        configure(client, "shop", allowed_groups=["staff"])
        yield client


# ---- a login transaction refused at the app ---------------------------------------------


def test_a_refused_transaction_is_spent_at_every_entry_point(staff_only):
    """Attack: bob, refused at shop after his password, replays the refused transaction id
    at each entry point (the login page, the password form as bob and as alice, a later
    step, resume, the consent form) to get a code. Each answers "expired"; nothing issues."""
    client = staff_only
    login_page = start(client, AuthRequest()).headers["location"]
    tx = login_page.split("tx=")[1]
    csrf = form_value(client.get(login_page).text, "csrf_token")
    refusal = submit_login(client, login_page, username="bob")
    assert refusal.status_code == 403 and "may not use Shop" in refusal.text

    attempts = [
        client.get(f"/login?tx={tx}", follow_redirects=False),
        client.post(
            "/login",
            data={"csrf_token": csrf, "tx": tx, "username": "bob", "password": PASSWORD},
            follow_redirects=False,
        ),
        client.post(
            "/login",
            data={"csrf_token": csrf, "tx": tx, "username": "alice", "password": PASSWORD},
            follow_redirects=False,
        ),
        client.post("/login/totp", data={"csrf_token": csrf, "tx": tx, "code": "123456"}, follow_redirects=False),
        client.get(f"/authorize/resume?tx={tx}", follow_redirects=False),
        client.post("/consent", data={"csrf_token": csrf, "tx": tx, "decision": "allow"}, follow_redirects=False),
    ]
    for answer in attempts:
        assert answer.status_code == 400, (answer.request.url, answer.status_code, answer.headers)
        no_code(client, answer)
    assert sessions_of(client, "bob") == [] and sessions_of(client, "alice") == []


# ---- removed, or the app narrowed, in the middle of the chain -----------------------------


@pytest.mark.parametrize("how", ["removed_from_group", "clients_file_narrowed"])
def test_access_withdrawn_between_password_and_second_factor_gives_no_code_and_no_session(staff_only, how):
    """Attack: alice passes her password while allowed; she is taken out of staff (or the
    clients file narrows shop to another group) before she posts her TOTP code. The code
    step must not finish the chain: no session, no code, and the transaction is spent."""
    client = staff_only
    secret = enrol_totp(client, "alice")
    code_step = submit_login(client, start(client, AuthRequest()).headers["location"]).headers["location"]
    assert code_step.startswith("/login/totp?tx=")
    form = page_form(client, code_step)
    if how == "removed_from_group":
        take_out(client, "staff", "alice")
    else:
        make_groups(client, ("ops", None, []))
        configure(client, "shop", allowed_groups=["ops"])

    answer = post_step(client, code_step, form, code=totp_now(client, secret, 1))
    assert answer.status_code == 403 and "may not use Shop" in answer.text
    no_code(client, answer)
    assert sessions_of(client, "alice") == []
    again = post_step(client, code_step, form, code=totp_now(client, secret, 2))
    assert again.status_code == 400  # spent
    no_code(client, again)


def test_access_withdrawn_during_enrolment_enrols_nothing(staff_only):
    """Attack: alice must enrol (require-mfa); she is taken out of staff while on the
    enrolment page. Confirming the authenticator must not enrol it, start a session or
    issue a code: no enrolment is asked of someone who may not use the app."""
    client = staff_only
    with client.app.state.services.sessions.begin() as db:
        require_mfa(db, "alice")
    enrol_step = submit_login(client, start(client, AuthRequest()).headers["location"]).headers["location"]
    assert enrol_step.startswith("/login/enrol_totp?tx=")
    page = client.get(enrol_step)
    secret = re.search(r'data-totp-secret="([A-Z2-7]+)"', page.text).group(1)
    form = {"csrf_token": form_value(page.text, "csrf_token"), "tx": form_value(page.text, "tx")}
    take_out(client, "staff", "alice")

    answer = post_step(client, enrol_step, form, code=totp_now(client, secret, 0))
    assert answer.status_code == 403, answer.text
    no_code(client, answer)
    services = client.app.state.services
    with services.sessions() as db:
        alice = db.scalar(select(User).where(User.username == "alice"))
        assert not services.factors.factors_of(db, alice).totp
    assert sessions_of(client, "alice") == []


def test_a_group_minimum_raised_between_password_and_code_is_enforced_at_the_code_step(client):
    """Attack: alice (TOTP, no passkey) passes her password; an admin raises her group's
    minimum to phr before she posts her code. The code must not finish the chain at mfa:
    the RP hears unmet_authentication_requirements (after the ask-an-admin page)."""
    make_groups(client, ("admins", None, ["alice"]))
    secret = enrol_totp(client, "alice")
    request = AuthRequest()
    code_step = submit_login(client, start(client, request).headers["location"]).headers["location"]
    form = page_form(client, code_step)
    set_min_acr(client, "admins", "phr")

    answer = post_step(client, code_step, form, code=totp_now(client, secret, 1))
    no_code(client, answer)
    assert answer.status_code == 403 and "enrolment link" in answer.text
    assert "unmet_authentication_requirements" in answer.text
    assert sessions_of(client, "alice") == []


# ---- the finished chain, parked before resume -----------------------------------------


def test_removed_after_the_chain_finished_resume_gives_no_code(staff_only):
    """Attack: the chain finished while alice was allowed (the session started, the request
    parked for resume); she is taken out of staff before the browser follows to resume."""
    client = staff_only
    finished = submit_login(client, start(client, AuthRequest()).headers["location"])
    assert finished.headers["location"].startswith("/authorize/resume?tx=")
    take_out(client, "staff", "alice")
    answer = client.get(finished.headers["location"], follow_redirects=False)
    assert answer.status_code == 403 and "may not use Shop" in answer.text
    no_code(client, answer)
    assert client.get(finished.headers["location"], follow_redirects=False).status_code == 400  # once


def test_a_group_minimum_raised_after_the_chain_finished_resume_steps_up(client):
    """Attack: alice finished a password-only chain; her group's minimum is raised to mfa
    before resume. "Authenticated for this request" must not skip the level check: resume
    asks for more, it does not issue a code at pwd."""
    make_groups(client, ("admins", None, ["alice"]))
    finished = submit_login(client, start(client, AuthRequest()).headers["location"])
    assert finished.headers["location"].startswith("/authorize/resume?tx=")
    set_min_acr(client, "admins", "mfa")
    answer = client.get(finished.headers["location"], follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    no_code(client, answer)


# ---- consent ------------------------------------------------------------------------------


def test_consent_page_shown_while_allowed_then_removed_allow_records_nothing_and_issues_nothing(staff_only):
    """Attack: the consent page is shown while alice is allowed; she is taken out of staff
    before she presses Allow. The decision must not issue a code nor record a consent."""
    client = staff_only
    response = submit_login(client, start(client, AuthRequest()).headers["location"])
    consent_at = client.get(response.headers["location"], follow_redirects=False).headers["location"]
    assert consent_at.startswith("/consent?tx=")
    form = page_form(client, consent_at)
    take_out(client, "staff", "alice")

    answer = client.post("/consent", data={**form, "decision": "allow"}, follow_redirects=False)
    assert answer.status_code == 403 and "may not use Shop" in answer.text
    no_code(client, answer)
    with client.app.state.services.sessions() as db:
        assert db.scalar(select(Consent)) is None


def test_a_consent_given_while_allowed_opens_nothing_after_removal(staff_only):
    """Attack: alice consented to shop while in staff; after she is taken out, the remembered
    consent and her IdP session must not give a code by single sign-on nor prompt=none."""
    client = staff_only
    tokens_for(client)
    take_out(client, "staff", "alice")
    sso = start(client, AuthRequest())
    assert sso.status_code == 403 and "may not use Shop" in sso.text
    no_code(client, sso)
    silent = AuthRequest(extra={"prompt": "none"})
    answer = start(client, silent)
    params = query_of(answer.headers["location"])
    assert answer.headers["location"].startswith(SHOP_REDIRECT)
    assert params["error"] == "access_denied" and params["state"] == silent.state and "code" not in params


# ---- authorization codes issued before the change --------------------------------------


def test_a_code_issued_before_removal_is_not_redeemable_after(staff_only):
    """Attack: a code issued to alice just before she is taken out of shop's group, redeemed
    within its lifetime. Found by this review (it yielded live tokens); fixed: the code
    grant checks allowed_groups at redemption (grants.may_still_use), and the removal
    expires her unredeemed codes there (revocation._expire_codes)."""
    client = staff_only
    request, code = sign_in_and_get_code(client)
    take_out(client, "staff", "alice")
    answer = redeem(client, request, code)
    assert refused(answer), after_redemption(client, answer)


def test_a_code_issued_before_the_clients_file_narrowed_the_groups_is_not_redeemable_after(staff_only):
    """Attack: as above, with nobody removed but the clients file narrowing shop's groups.
    Found by this review; fixed by the same check at redemption."""
    client = staff_only
    request, code = sign_in_and_get_code(client)
    make_groups(client, ("ops", None, []))
    configure(client, "shop", allowed_groups=["ops"])
    answer = redeem(client, request, code)
    assert refused(answer), after_redemption(client, answer)


def test_a_code_issued_before_logout_yields_no_live_tokens_after(client):
    """Attack: a code issued before logout, redeemed after it: its tokens would be born after
    the session's grants were revoked. Found by this review; fixed: ending a session's
    grants expires their unredeemed codes (offline_access grants aside, as for tokens)."""
    signed_in = tokens_for(client, AuthRequest(scope=ONLINE))
    request, code = sign_in_and_get_code(client, AuthRequest(scope=ONLINE))  # single sign-on
    out = client.get("/logout", params={"id_token_hint": signed_in["id_token"]}, follow_redirects=False)
    assert out.status_code == 200 and "You are signed out" in out.text
    answer = redeem(client, request, code)
    assert refused(answer), after_redemption(client, answer)


def test_a_code_issued_before_a_password_change_yields_no_live_tokens_after(client):
    """Attack: whoever stole the password started a sign-in; the owner changes the password;
    the thief redeems the code. Found by this review; fixed: revoking every grant of a user
    expires their unredeemed codes too."""
    request, code = sign_in_and_get_code(client, AuthRequest(scope=ONLINE))
    changed = client.post(
        "/account/password",
        data={
            "csrf_token": form_value(client.get("/account").text, "csrf_token"),
            "current_password": PASSWORD,
            "new_password": "plum tractor velvet orbit",
            "confirm_password": "plum tractor velvet orbit",
        },
        follow_redirects=False,
    )
    assert changed.status_code == 303 and changed.headers["location"] == "/account?done=password"
    answer = redeem(client, request, code)
    assert refused(answer), after_redemption(client, answer)


def test_a_code_issued_before_the_user_was_disabled_is_not_redeemable(client):
    """Attack: as above with `idp user disable`: the code grant checks the disabled flag."""
    request, code = sign_in_and_get_code(client)
    with client.app.state.services.sessions.begin() as db:
        disable_user(db, "alice")
    assert refused(redeem(client, request, code))


# ---- refresh tokens, the grace hand-out, introspection ----------------------------------


def test_the_grace_hand_out_is_refused_after_removal(graced, clock):
    """Attack: a refresh races its own rotation (the one request the grace window is for)
    after alice was taken out of staff: the hand-out must not give the successor, and
    nothing of the grant may work."""
    first = tokens_for(graced)
    rotated = refresh(graced, first["refresh_token"]).json()
    take_out(graced, "staff", "alice")
    clock.advance(1)
    assert refused(refresh(graced, first["refresh_token"]))
    assert refused(refresh(graced, rotated["refresh_token"]))
    assert dead(graced, first) and dead(graced, rotated)


def test_the_grace_hand_out_is_refused_after_the_clients_file_narrowed(graced, clock):
    """Attack: as above, but nobody was removed (the clients file narrowed shop to ops): the
    refresh-time check must run before the grace hand-out, and end what alice holds there."""
    first = tokens_for(graced)
    rotated = refresh(graced, first["refresh_token"]).json()
    make_groups(graced, ("ops", None, []))
    configure(graced, "shop", allowed_groups=["ops"])
    clock.advance(1)
    assert refused(refresh(graced, first["refresh_token"]))
    assert refused(refresh(graced, rotated["refresh_token"]))
    assert dead(graced, first) and dead(graced, rotated)


def test_removal_ends_offline_access_and_putting_the_user_back_revives_nothing(staff_only):
    """Attack: an offline_access grant outlives removal; or an admin who removes and re-adds
    alice (a mistake undone) revives the tokens a thief copied meanwhile. Introspection
    calls them inactive, refresh and userinfo refuse them, for good."""
    client = staff_only
    offline = tokens_for(client, AuthRequest(scope=OFFLINE))
    online = tokens_for(client, AuthRequest(scope=ONLINE))
    take_out(client, "staff", "alice")
    put_in(client, "staff", "alice")
    for tokens in (offline, online):
        assert refused(refresh(client, tokens["refresh_token"]))
        assert dead(client, tokens)
    assert tokens_for(client)["access_token"]  # a new sign-in works again


def test_a_disabled_users_refresh_and_grace_hand_out_are_refused_for_good(graced, clock):
    """Attack: a disabled user's client races a rotation (grace) or keeps the successor; an
    admin's enabling the account again must not revive either."""
    first = tokens_for(graced)
    rotated = refresh(graced, first["refresh_token"]).json()
    with graced.app.state.services.sessions.begin() as db:
        disable_user(db, "alice")
    clock.advance(1)
    assert refused(refresh(graced, first["refresh_token"]))
    assert refused(refresh(graced, rotated["refresh_token"]))
    with graced.app.state.services.sessions.begin() as db:
        db.execute(update(User).where(User.username == "alice").values(disabled=False))
    assert refused(refresh(graced, rotated["refresh_token"]))
    assert dead(graced, rotated)


def test_client_credentials_tokens_are_not_touched_by_a_users_removal(staff_only):
    """client_credentials has no user: removing alice must not end the client's own tokens
    (revocation by user must not match user_id NULL), while ending all of hers."""
    client = staff_only
    own = client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"}, auth=SHOP)
    assert own.status_code == 200
    alice = tokens_for(client)
    take_out(client, "staff", "alice")
    assert introspect(client, own.json()["access_token"])["active"] is True
    assert "sub" not in introspect(client, own.json()["access_token"])
    assert dead(client, alice)


# ---- step-up and a second app --------------------------------------------------------------


def test_removed_during_a_step_up_the_session_is_not_upgraded_and_no_code_issues(staff_only):
    """Attack: alice's password session (from portal) is stepped up for shop (she has TOTP);
    she is taken out of staff before she posts the code. The step-up must neither upgrade
    the session nor issue a code."""
    client = staff_only
    follow_to_client(client, start(client, PORTAL))
    secret = enrol_totp(client, "alice")
    step_up = start(client, AuthRequest())
    assert step_up.headers["location"].startswith("/login/totp?tx="), step_up.headers
    form = page_form(client, step_up.headers["location"])
    take_out(client, "staff", "alice")

    answer = post_step(client, step_up.headers["location"], form, code=totp_now(client, secret, 1))
    assert answer.status_code == 403 and "may not use Shop" in answer.text
    no_code(client, answer)
    (session,) = sessions_of(client, "alice")
    assert session.acr == "pwd"


def test_a_step_up_for_an_allowed_app_opens_no_other_app(staff_only):
    """Attack: alice may use shop but not spa (ops only). She steps her session up for shop
    (mfa) with shop's transaction; spa must still refuse her, by SSO and prompt=none, and a
    request for spa that asks for mfa is refused before any step-up is offered."""
    client = staff_only
    make_groups(client, ("ops", None, []))
    configure(client, "spa", allowed_groups=["ops"])
    follow_to_client(client, start(client, PORTAL))
    secret = enrol_totp(client, "alice")
    spa = AuthRequest(
        client_id="spa", redirect_uri="http://localhost:5173/callback", scope=ONLINE, extra={"acr_values": "mfa"}
    )
    refused_first = start(client, spa)
    assert refused_first.status_code == 403 and "may not use Single Page App" in refused_first.text

    request = AuthRequest(extra={"acr_values": "mfa"})
    step_up = start(client, request)
    assert step_up.headers["location"].startswith("/login/totp?tx=")
    form = page_form(client, step_up.headers["location"])
    done = post_step(client, step_up.headers["location"], form, code=totp_now(client, secret, 1))
    location = to_client(client, done)
    assert location.startswith(SHOP_REDIRECT) and "code" in query_of(location)

    again = start(client, spa)
    assert again.status_code == 403
    no_code(client, again)
    silent = start(client, dataclasses.replace(spa, extra={"prompt": "none"}))
    assert query_of(silent.headers["location"])["error"] == "access_denied"


def test_a_group_minimum_raised_over_a_live_session_steps_up_sso_and_refuses_prompt_none(client):
    """Attack: alice holds a password session; her group's minimum is then raised to mfa.
    Single sign-on must not hand shop a code at pwd: prompt=none is interaction_required,
    an interactive request goes back into the chain."""
    make_groups(client, ("admins", None, ["alice"]))
    follow_to_client(client, start(client, PORTAL))
    set_min_acr(client, "admins", "mfa")
    silent = start(client, AuthRequest(extra={"prompt": "none"}))
    assert query_of(silent.headers["location"])["error"] == "interaction_required"
    interactive = start(client, AuthRequest())
    assert interactive.headers["location"].startswith("/login"), interactive.headers
    no_code(client, interactive)


# ---- the groups claim ------------------------------------------------------------------------


@pytest.fixture
def wiki(client: TestClient) -> TestClient:
    """shop as the README's wiki: the groups scope, allowed_groups staff and ops (the claim
    lists those); alice is in staff, ops and secret-project."""
    make_groups(client, ("staff", None, ["alice"]), ("ops", None, ["alice"]), ("secret-project", None, ["alice"]))
    configure(client, "shop", scope="openid profile email offline_access groups", allowed_groups=["staff", "ops"])
    return client


WIKI_SCOPE = "openid groups offline_access"


def groups_everywhere(client: TestClient, tokens: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(the ID token's groups, userinfo's groups) for one token response."""
    claims = decode_id_token(client, tokens["id_token"])
    info = userinfo(client, tokens["access_token"])
    assert info.status_code == 200, info.text
    return claims["groups"], info.json()["groups"]


def test_the_groups_claim_never_lists_a_group_the_client_may_not_see(wiki):
    """Attack: the groups claim (ID token, refreshed ID token, userinfo, the consent page)
    leaks the names of groups outside the client's allowed_groups, before and after the
    memberships change."""
    client = wiki
    request = AuthRequest(scope=WIKI_SCOPE)
    response = start(client, request)
    consent_at = client.get(
        submit_login(client, response.headers["location"]).headers["location"], follow_redirects=False
    ).headers["location"]
    consent_page = client.get(consent_at).text
    assert "secret-project" not in consent_page and "staff" in consent_page
    location = to_client(
        client,
        client.post("/consent", data={**page_form(client, consent_at), "decision": "allow"}, follow_redirects=False),
    )
    tokens = redeem(client, request, query_of(location)["code"]).json()
    assert groups_everywhere(client, tokens) == (["ops", "staff"], ["ops", "staff"])

    make_groups(client, ("hr", None, ["alice"]))  # a new group the client may not see
    refreshed = refresh(client, tokens["refresh_token"]).json()
    assert groups_everywhere(client, refreshed) == (["ops", "staff"], ["ops", "staff"])

    take_out(client, "ops", "alice")  # staff still lets her in; the claim follows at once
    assert userinfo(client, refreshed["access_token"]).json()["groups"] == ["staff"]
    again = refresh(client, refreshed["refresh_token"]).json()
    assert groups_everywhere(client, again) == (["staff"], ["staff"])


def test_the_groups_claim_follows_a_clients_file_that_narrowed_the_groups(wiki):
    """Attack: after the clients file narrows allowed_groups from staff+ops to staff, the
    refreshed ID token and userinfo still name ops (a role the RP would still grant)."""
    client = wiki
    tokens = tokens_for(client, AuthRequest(scope=WIKI_SCOPE))
    configure(client, "shop", allowed_groups=["staff"])
    assert userinfo(client, tokens["access_token"]).json()["groups"] == ["staff"]
    refreshed = refresh(client, tokens["refresh_token"]).json()
    assert groups_everywhere(client, refreshed) == (["staff"], ["staff"])


# ---- case games ------------------------------------------------------------------------------


def test_group_names_are_one_name_whatever_their_case_in_the_file_the_cli_and_the_claim(client):
    """Attack: `allowed_groups = ["Staff"]` in the clients file and a group made as "STAFF"
    are compared as different strings somewhere: a member refused (fail closed, but a
    mismatch elsewhere could fail open), a non-member let in, the claim leaking or empty,
    or `remove-member StAfF` missing the grant it must end."""
    make_groups(client, ("STAFF", None, ["Alice"]), ("Other", None, ["bob"]))
    toml = _toml_with_inline_jwks().replace(
        'scope = "openid profile email offline_access"',
        'scope = "openid profile email offline_access groups"\nallowed_groups = ["Staff", "sTaFf"]',
    )
    services = client.app.state.services
    with services.sessions() as db:
        known = frozenset(db.scalars(select(Group.name)))
    configs = parse_clients_toml(toml, source="test", known_groups=known)
    with services.sessions.begin() as db:
        sync_clients(db, services.keyring, configs)
    services.oidc.clients.reload()
    assert services.oidc.clients.get("shop").allowed_groups == frozenset({"staff"})

    tokens = tokens_for(client, AuthRequest(scope=WIKI_SCOPE))
    assert groups_everywhere(client, tokens) == (["staff"], ["staff"])
    client.cookies.clear()
    bob = submit_login(client, start(client, AuthRequest()).headers["location"], username="BOB")
    assert bob.status_code == 403 and "may not use Shop" in bob.text

    removal = take_out(client, "StAfF", "ALICE")
    assert removal.withdrawn == (("alice", "shop"),)
    assert refused(refresh(client, tokens["refresh_token"]))
    assert dead(client, tokens)
