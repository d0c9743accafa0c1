"""The invitation's grace (issue 18, idp/account/reauth.py with idp/links/records.py
`in_grace`): within 15 minutes of confirming an invitation, the session its chain started
may add ONE credential (a passkey, or an authenticator app) without signing in again:
neither the sign-in's age (settings.reauth_seconds) nor the user's level is asked. A second
credential, the 16th minute, another session of the same user, a session a recovery link
started, and an action that adds nothing are held to the usual rules.

The session is made the way a user makes one (the password on /login) and noted on a used
invitation directly (records.note_session, as the chain's end does); time comes from the
app's clock, aged past reauth_seconds (600 s) but within the grace (900 s)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.testclient import TestClient

from idp.db.models import IdpSession, Passkey
from idp.links import records
from idp.links.records import Kind
from tests.account.test_sensitive_additions import (
    REAUTH,
    add_passkey,
    audits,
    begin_setup,
    credentials,
    give_passkey,
    give_totp,
    passkey_options,
    post,
    services_of,
    sign_in,
    totp_code,
    user_id,
)
from tests.conftest import ISSUER
from tests.support.clock import ManualClock

BROWSER = "b" * 43  # the digest of the confirming browser's login binding (any will do here)
PAST_REAUTH = 660  # seconds: older than reauth_seconds (600), within the grace (900)


def sid_of(client: TestClient) -> str:
    services = services_of(client)
    digest = services.keyring.digest(client.cookies["idp_session"])
    with services.sessions() as db:
        return str(db.scalar(select(IdpSession.sid).where(IdpSession.cookie_digest == digest)))


def invited(client: TestClient, kind: Kind = "invite") -> None:
    """alice's link of `kind` is confirmed and used now, and its chain started this browser's
    session (what the chain's end notes)."""
    services, uid, sid = services_of(client), user_id(client), sid_of(client)
    with services.sessions.begin() as db:
        issued = records.issue(db, services.keyring, uid, kind)
        assert not isinstance(
            records.confirm(db, services.keyring, issued.secret, BROWSER, ip=None, user_agent=None), records.Refused
        )
        assert records.use(db, issued.link_id, BROWSER, ip=None, user_agent=None)
        records.note_session(db, issued.link_id, sid)


def refused_for_reauth(response: Any) -> bool:
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.status_code in (401, 403) and response.json().get("redirect") == REAUTH
    return response.status_code == 303 and response.headers["location"] == REAUTH


@pytest.fixture
def other_browser(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app, base_url=ISSUER) as other:
        yield other


# ---- the grace ----------------------------------------------------------------------------------


def test_the_invitations_session_may_add_a_passkey_without_signing_in_again(client, clock: ManualClock):
    sign_in(client)
    invited(client)
    clock.advance(PAST_REAUTH)

    add_passkey(client, "First passkey")

    assert len(credentials(client)["passkeys"]) == 1
    assert audits(client, "account.reauth_required") == []
    (added,) = audits(client, "passkey.added")
    assert added.detail["name"] == "First passkey"


def test_the_invitations_session_may_set_up_an_authenticator_app_without_signing_in_again(client, clock):
    sign_in(client)
    invited(client)
    clock.advance(PAST_REAUTH)

    secret = begin_setup(client)  # a set-up begun adds nothing yet: its confirmation is the one credential
    confirmed = post(client, "/account/totp/confirm", code=totp_code(secret, clock))

    assert confirmed.status_code == 200 and "Save your backup codes" in confirmed.text
    assert credentials(client)["totp"][0][1] is True
    assert audits(client, "account.reauth_required") == []


def test_the_grace_waives_the_level_too(client, clock):
    """alice's authenticator app, turned on before the invitation, makes her level mfa; the
    invitation's password-only session may still add its one credential."""
    sign_in(client)
    give_totp(client, clock)
    invited(client)

    add_passkey(client)

    assert len(credentials(client)["passkeys"]) == 1


# ---- and its limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("first", ["passkey", "authenticator app"])
def test_a_second_credential_needs_a_fresh_sign_in(client, clock, first):
    sign_in(client)
    invited(client)
    clock.advance(PAST_REAUTH)
    if first == "passkey":
        add_passkey(client)
    else:
        secret = begin_setup(client)
        assert post(client, "/account/totp/confirm", code=totp_code(secret, clock)).status_code == 200
    before = credentials(client)

    second = passkey_options(client)

    assert refused_for_reauth(second), second.text
    assert credentials(client) == before
    (refusal,) = audits(client, "account.reauth_required")
    assert refusal.detail["action"] == "passkey.options" and refusal.detail["reason"] == "stale"


def test_after_fifteen_minutes_the_grace_is_over(client, clock):
    sign_in(client)
    invited(client)
    clock.advance(records.GRACE.total_seconds())

    response = passkey_options(client)

    assert refused_for_reauth(response), response.text
    assert credentials(client)["passkeys"] == []
    assert audits(client, "account.reauth_required")[-1].detail["reason"] == "stale"


def test_another_session_of_the_same_user_has_no_grace(client, other_browser, clock):
    sign_in(client)
    invited(client)  # the grace is this browser's session's
    sign_in(other_browser)
    clock.advance(PAST_REAUTH)

    response = passkey_options(other_browser)

    assert refused_for_reauth(response), response.text
    assert credentials(client)["passkeys"] == []


def test_a_session_a_recovery_link_started_has_no_grace(client, clock):
    sign_in(client)
    invited(client, kind="recover")
    clock.advance(PAST_REAUTH)

    response = passkey_options(client)

    assert refused_for_reauth(response), response.text


def test_the_grace_covers_additions_only(client, clock):
    """Removing a passkey (a sensitive action that adds nothing) still needs a recent sign-in."""
    sign_in(client)
    give_passkey(client)  # before the invitation: the grace's one credential is still to come
    invited(client)
    clock.advance(PAST_REAUTH)
    with services_of(client).sessions() as db:
        passkey = db.scalar(select(Passkey.id).where(Passkey.user_id == user_id(client)))

    response = post(client, f"/account/passkeys/{passkey}/remove")

    assert refused_for_reauth(response), response.text
    assert len(credentials(client)["passkeys"]) == 1


def test_grace_is_measured_from_the_confirmation(client, clock):
    assert records.GRACE == timedelta(minutes=15)
    sign_in(client)
    invited(client)
    clock.advance(records.GRACE.total_seconds() - 1)

    add_passkey(client)  # the last second of the grace

    assert len(credentials(client)["passkeys"]) == 1
