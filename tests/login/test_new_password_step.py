"""The new-password step (`idp user set-password --must-change`): the next sign-in chooses a
password of the user's own before any code is issued, after every factor asked for; the new
one is policy-checked and differs from the given one; a refusal counts toward no lockout;
completing it clears the flag, ends the user's other sessions, revokes their tokens, is
audited, and the given password no longer signs in."""

from __future__ import annotations

import pyotp
import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from idp.db.models import AuditEvent, IdpSession, User
from idp.login import policy
from idp.mfa.held import UserFactors
from idp.user_lifecycle import set_password
from tests.login.test_chain import at_step, enrol_totp, error_of, id_token_of, post_code, to_client
from tests.support.rp import AuthRequest, form_value, refresh, start, submit_login, tokens_for
from tests.support.seed import PASSWORD

GIVEN = "temporary lagoon pepper 7"  # what the admin gave
CHOSEN = "my own quiet orchard lantern"


def must_change(client: TestClient, username: str = "alice") -> None:
    """`idp user set-password alice --must-change`, in process."""
    services = client.app.state.services
    password_hash = services.hashing.hash(GIVEN)
    with services.sessions.begin() as db:
        set_password(db, username, password_hash, must_change=True)


def alice(client: TestClient) -> User:
    with client.app.state.services.sessions() as db:
        user = db.scalar(select(User).where(User.username == "alice"))
        assert user is not None
        return user


def kinds(client: TestClient) -> list[str]:
    with client.app.state.services.sessions() as db:
        return list(db.scalars(select(AuditEvent.kind).order_by(AuditEvent.id)))


def choose(client: TestClient, location: str, new: str, confirm: str | None = None):  # type: ignore[no-untyped-def]
    return post_code(client, location, new_password=new, confirm_password=new if confirm is None else confirm)


@pytest.mark.parametrize(
    "factors, methods, expected",
    [
        pytest.param(UserFactors(password_must_change=True), ["pwd"], "new_password", id="right after the password"),
        pytest.param(
            UserFactors(totp=True, password_must_change=True), ["pwd"], "totp", id="after the second factor, not before"
        ),
        pytest.param(
            UserFactors(totp=True, password_must_change=True),
            ["pwd", "otp"],
            "new_password",
            id="once every factor is proven",
        ),
        pytest.param(UserFactors(), ["pwd"], "done", id="not without the flag"),
    ],
)
def test_the_policy_puts_the_new_password_last(factors: UserFactors, methods: list[str], expected: str) -> None:
    required = policy.required_level("pwd", factors)
    assert policy.next_step(required, methods, factors) == expected


def test_must_change_asks_for_a_new_password_before_any_code_is_issued(client: TestClient) -> None:
    must_change(client)
    request = AuthRequest()
    response = submit_login(client, start(client, request).headers["location"], password=GIVEN)
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/login/new_password?tx="), "no code before the new password"
    page = client.get(location)
    assert page.status_code == 200
    assert 'autocomplete="new-password"' in page.text and 'name="confirm_password"' in page.text

    response = choose(client, location, CHOSEN)
    assert response.status_code == 303
    claims = id_token_of(client, request, to_client(client, response))
    assert claims["acr"] == "pwd" and claims["amr"] == ["pwd"]
    user = alice(client)
    assert not user.password_must_change
    assert client.app.state.services.hashing.verify(user.password_hash, CHOSEN)
    trail = kinds(client)
    assert "login.new_password.succeeded" in trail
    assert trail.index("password.changed") < trail.index("login.succeeded")  # changed before the chain ended


@pytest.mark.parametrize(
    "new, confirm, words",
    [
        pytest.param(CHOSEN, CHOSEN + "!", "The two passwords are not the same.", id="the two differ"),
        pytest.param("short one", None, "Use at least 15 characters.", id="too short"),
        pytest.param(GIVEN, None, "Choose a password other than the one you were given.", id="the given one"),
        pytest.param("passwordstandard", None, "common", id="a common password"),
    ],
)
def test_a_refused_new_password_is_said_counts_toward_no_lockout_and_issues_nothing(
    client: TestClient, new: str, confirm: str | None, words: str
) -> None:
    must_change(client)
    response = submit_login(client, start(client, AuthRequest()).headers["location"], password=GIVEN)
    location = response.headers["location"]

    refused = choose(client, location, new, confirm)

    assert refused.status_code == 400
    assert words in error_of(refused.text)
    user = alice(client)
    assert user.password_must_change and user.failed_logins == 0
    assert client.app.state.services.hashing.verify(user.password_hash, GIVEN)
    assert "login.new_password.failed" in kinds(client) and "login.succeeded" not in kinds(client)
    assert choose(client, location, CHOSEN).status_code == 303  # the chain goes on from the same page


def test_after_the_change_the_given_password_no_longer_signs_in_and_the_new_one_does(client: TestClient) -> None:
    must_change(client)
    response = submit_login(client, start(client, AuthRequest()).headers["location"], password=GIVEN)
    to_client(client, choose(client, response.headers["location"], CHOSEN))

    with TestClient(client.app, base_url=str(client.base_url)) as other:
        old = submit_login(other, start(other, AuthRequest()).headers["location"], password=GIVEN)
        assert old.status_code == 401
        new = submit_login(other, start(other, AuthRequest()).headers["location"], password=CHOSEN)
        assert new.status_code == 303 and not new.headers["location"].startswith("/login")


def test_completing_it_ends_the_users_other_sessions_and_revokes_their_tokens(client: TestClient) -> None:
    earlier = tokens_for(client)  # a session and a grant from before the flag was set
    services = client.app.state.services
    with services.sessions.begin() as db:  # the flag alone, as if set while that session lived
        db.execute(update(User).where(User.username == "alice").values(password_must_change=True))

    with TestClient(client.app, base_url=str(client.base_url)) as other:
        response = submit_login(other, start(other, AuthRequest()).headers["location"])
        assert response.headers["location"].startswith("/login/new_password?tx=")
        to_client(other, choose(other, response.headers["location"], CHOSEN))

    assert refresh(client, earlier["refresh_token"]).status_code == 400
    assert client.get("/userinfo", headers={"authorization": f"Bearer {earlier['access_token']}"}).status_code == 401
    with services.sessions() as db:
        live = db.scalars(select(IdpSession).where(IdpSession.ended_at.is_(None))).all()
        [event] = db.scalars(select(AuditEvent).where(AuditEvent.kind == "password.changed")).all()
    assert len(live) == 1  # the new sign-in's only
    assert event.detail["sessions_ended"] == 1 and event.detail["reason"] == "must_change"


def test_with_a_second_factor_the_new_password_comes_after_the_code(client: TestClient) -> None:
    secret = enrol_totp(client)
    must_change(client)
    request = AuthRequest()
    response = submit_login(client, start(client, request).headers["location"], password=GIVEN)
    assert response.headers["location"].startswith("/login/totp?tx=")
    now = at_step(client, 1)
    response = post_code(client, response.headers["location"], code=pyotp.TOTP(secret).at(now))
    assert response.headers["location"].startswith("/login/new_password?tx=")
    # a password alone is not enough here: the page asks for the shorter minimum of a second-factor user
    page = client.get(response.headers["location"])
    assert 'minlength="8"' in page.text and form_value(page.text, "username") == "alice"
    claims = id_token_of(client, request, to_client(client, choose(client, response.headers["location"], CHOSEN)))
    assert claims["acr"] == "mfa"


def test_the_seeded_password_is_not_the_one_given(client: TestClient) -> None:
    """Guards the fixtures above: the given password really replaced the seeded one."""
    must_change(client)
    assert submit_login(client, start(client, AuthRequest()).headers["location"], password=PASSWORD).status_code == 401
