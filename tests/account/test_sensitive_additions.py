"""Adding a credential is a sensitive action (DESIGN.md §2): passkey registration (its
options and the registration itself), TOTP set-up and its confirmation, and new backup
codes need a sign-in no older than settings.reauth_seconds, at the user's current level
(mfa once they have a second factor, else pwd). A refused request changes nothing, is
audited (account.reauth_required, with the action), and sends the browser to sign in
again; an allowed one is audited, and /account lists the user's recent credential changes
with when and from which device.

Sessions are made the way a user makes them (the login chain), then aged or given a new
factor "from elsewhere" directly in the database. Time comes from the app's injected clock
(the `clock` fixture)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pyotp
import pytest
from sqlalchemy import select, update
from starlette.applications import Starlette
from starlette.testclient import TestClient

from idp.audit.trail import record_audit
from idp.db.models import (
    AuditEvent,
    BackupCode,
    IdpSession,
    Passkey,
    TotpCredential,
    User,
)
from tests.account.support import sign_in_with_code
from tests.conftest import ISSUER
from tests.support.authenticator import SoftAuthenticator
from tests.support.clock import ManualClock
from tests.support.rp import form_value
from tests.support.seed import PASSWORD

REAUTH = "/login?reauth=1"
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4.1 Mobile/15E148 Safari/604.1"
)
FIREFOX_LINUX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
UTC_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"


# ---- the browser --------------------------------------------------------------------------------


def browser(app: Starlette, agent: str) -> TestClient:
    return TestClient(app, base_url=ISSUER, headers={"user-agent": agent})


def sign_in(client: TestClient, username: str = "alice") -> None:
    csrf = form_value(client.get("/login").text, "csrf_token")
    response = client.post(
        "/login", data={"csrf_token": csrf, "username": username, "password": PASSWORD}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/account", response.text


def csrf_of(client: TestClient) -> str:
    return form_value(client.get("/account").text, "csrf_token")


def post(client: TestClient, path: str, **fields: str):  # type: ignore[no-untyped-def]
    response = client.post(path, data={"csrf_token": csrf_of(client), **fields}, follow_redirects=False)
    assert response.headers["cache-control"] == "no-store", path
    return response


def passkey_options(client: TestClient):  # type: ignore[no-untyped-def]
    return client.post("/account/passkeys/options", json={"csrf_token": csrf_of(client)})


def passkey_register(
    client: TestClient, options: dict[str, Any], name: str = "Laptop", authenticator: SoftAuthenticator | None = None
):  # type: ignore[no-untyped-def]
    credential = (authenticator or SoftAuthenticator()).create(options["publicKey"])
    return client.post(
        "/account/passkeys",
        json={
            "csrf_token": csrf_of(client),
            "challenge_id": options["challenge_id"],
            "credential": credential,
            "name": name,
        },
    )


def add_passkey(client: TestClient, name: str = "Laptop") -> None:
    options = passkey_options(client)
    assert options.status_code == 200, options.text
    done = passkey_register(client, options.json(), name)
    assert done.status_code == 200 and done.json() == {"redirect": "/account"}, done.text


def totp_code(secret: str, clock: ManualClock) -> str:
    return pyotp.TOTP(secret).at(clock.time())


def begin_setup(client: TestClient) -> str:
    response = post(client, "/account/totp/setup")
    assert response.status_code == 200, response.text
    match = re.search(r'data-totp-secret="([A-Z2-7]+)"', response.text)
    assert match
    return match.group(1)


# ---- the database, read and arranged directly -------------------------------------------------------


def services_of(client: TestClient):  # type: ignore[no-untyped-def]
    return client.app.state.services  # type: ignore[attr-defined]


def user_id(client: TestClient, username: str = "alice") -> int:
    with services_of(client).sessions() as db:
        return db.scalar(select(User.id).where(User.username == username))  # type: ignore[no-any-return]


def credentials(client: TestClient) -> dict[str, Any]:
    """Everything that signs alice in, row by row: what a refused request must not change."""
    uid = user_id(client)
    with services_of(client).sessions() as db:
        return {
            "passkeys": sorted(db.scalars(select(Passkey.credential_id).where(Passkey.user_id == uid))),
            "totp": sorted(
                (r.secret_encrypted, r.confirmed_at is not None, r.last_used_step)
                for r in db.scalars(select(TotpCredential).where(TotpCredential.user_id == uid))
            ),
            "backup_codes": sorted(db.scalars(select(BackupCode.code_hash).where(BackupCode.user_id == uid))),
            "failed_logins": db.scalar(select(User.failed_logins).where(User.id == uid)) or 0,
        }


def audits(client: TestClient, kind: str) -> list[AuditEvent]:
    with services_of(client).sessions() as db:
        rows = list(db.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))
        for row in rows:
            db.expunge(row)
        return rows


ADDITION_KINDS = (
    "passkey.added",
    "mfa.totp.setup_started",
    "mfa.totp.enabled",
    "mfa.backup_codes.generated",
    "mfa.backup_codes.regenerated",
)


def additions_audited(client: TestClient) -> list[int]:
    with services_of(client).sessions() as db:
        return list(db.scalars(select(AuditEvent.id).where(AuditEvent.kind.in_(ADDITION_KINDS))))


def age_sign_ins(client: TestClient) -> None:
    """alice's sessions last signed in interactively reauth_seconds + 60 ago."""
    services = services_of(client)
    with services.sessions.begin() as db:
        db.execute(
            update(IdpSession)
            .where(IdpSession.user_id == user_id(client))
            .values(auth_time=services.clock.now() - timedelta(seconds=services.settings.reauth_seconds + 60))
        )


def set_session_level(client: TestClient, acr: str) -> None:
    cookie = client.cookies.get("idp_session")
    assert cookie
    services = services_of(client)
    with services.sessions.begin() as db:
        db.execute(
            update(IdpSession).where(IdpSession.cookie_digest == services.keyring.digest(cookie)).values(acr=acr)
        )


def session_level(client: TestClient) -> str:
    cookie = client.cookies.get("idp_session")
    services = services_of(client)
    with services.sessions() as db:
        return db.scalar(
            select(IdpSession.acr).where(  # type: ignore[no-any-return]
                IdpSession.cookie_digest == services.keyring.digest(cookie)
            )
        )


def give_totp(client: TestClient, clock: ManualClock) -> str:
    """alice's authenticator app, enabled from elsewhere (her sessions are not touched)."""
    services, uid = services_of(client), user_id(client)
    with services.sessions.begin() as db:
        secret = services.factors.begin_totp(db, uid)
        assert services.factors.confirm_totp(db, uid, totp_code(secret, clock)).ok
        services.factors.replace_backup_codes(db, uid, [("AAAA-AAAA", services.hashing.hash("AAAA-AAAA"))])
    clock.advance(30)
    return secret


def give_passkey(client: TestClient) -> None:
    """A passkey of alice's, added from elsewhere (her sessions are not touched)."""
    services, uid = services_of(client), user_id(client)
    with services.sessions.begin() as db:
        user = db.get(User, uid)
        challenge = services.passkeys.registration_options(db, user)
        credential = SoftAuthenticator().create(json.loads(challenge.options_json))
        services.passkeys.register(db, user, challenge.id, credential, "Phone")


# ---- refused: too old, or too weak ------------------------------------------------------------------

ADDITIONS = ["passkey options", "passkey register", "totp setup", "totp confirm", "new backup codes"]
ACTION_NAMES = {
    "passkey options": "passkey.options",
    "passkey register": "passkey.register",
    "totp setup": "totp.setup",
    "totp confirm": "totp.confirm",
    "new backup codes": "backup_codes.regenerate",
}


@pytest.mark.parametrize("why", ["stale", "level"], ids=["sign-in too old", "password-only session of an mfa user"])
@pytest.mark.parametrize("action", ADDITIONS)
def test_adding_a_credential_needs_a_recent_sign_in_at_the_users_level(client, clock, action, why):
    sign_in(client)  # a password, and alice has no second factor: pwd is her level
    pending: dict[str, Any] = {}
    if action == "passkey register":  # options asked for while allowed: they must not carry over
        pending["options"] = passkey_options(client).json()
    if action == "totp confirm":  # a set-up begun while allowed
        pending["secret"] = begin_setup(client)
    if action == "new backup codes":
        pending["secret"] = give_totp(client, clock)
        if why == "stale":
            sign_in_with_code(client, pending["secret"], clock.time())  # an mfa session, that then grows old
            clock.advance(30)
    if why == "stale":
        age_sign_ins(client)
    elif action.startswith("totp"):
        give_passkey(client)  # a second factor: her level is mfa now, her session stays pwd
    elif action != "new backup codes":
        give_totp(client, clock)
    before, audited_before = credentials(client), additions_audited(client)

    response = {
        "passkey options": lambda: passkey_options(client),
        "passkey register": lambda: passkey_register(client, pending["options"]),
        "totp setup": lambda: post(client, "/account/totp/setup"),
        "totp confirm": lambda: post(client, "/account/totp/confirm", code=totp_code(pending["secret"], clock)),
        "new backup codes": lambda: post(
            client, "/account/backup-codes", password=PASSWORD, code=totp_code(pending["secret"], clock)
        ),
    }[action]()

    if action.startswith("passkey"):  # JSON: passkeys.js follows `redirect`
        assert response.status_code == (401 if why == "stale" else 403), response.text
        assert response.json() == {"error": "Sign in again to continue.", "redirect": REAUTH}
        assert response.headers["cache-control"].startswith("no-store")
    else:
        assert response.status_code == 303 and response.headers["location"] == REAUTH, response.text
    assert credentials(client) == before, "a refused addition changes nothing"
    refusal = audits(client, "account.reauth_required")[-1]
    assert refusal.user_id == user_id(client) and refusal.outcome == "refused"
    assert refusal.detail["action"] == ACTION_NAMES[action] and refusal.detail["reason"] == why
    assert additions_audited(client) == audited_before


def test_a_stolen_old_session_cookie_cannot_plant_a_passkey(app, client):
    """alice signed in on her laptop a while ago. Someone who copied her session cookie tries,
    from another machine, to register their own authenticator as a passkey of hers, with a
    challenge her own page had asked for while her sign-in was fresh, and with one of theirs."""
    client.headers["user-agent"] = FIREFOX_LINUX
    sign_in(client)
    fresh_options = passkey_options(client).json()
    age_sign_ins(client)
    thief = browser(app, CHROME_WINDOWS)
    thief.cookies.set("idp_session", client.cookies["idp_session"])
    assert thief.get("/account").status_code == 200  # the session itself still works
    authenticator = SoftAuthenticator()

    own_options = passkey_options(thief)
    planted = passkey_register(thief, fresh_options, "Not alice's", authenticator)

    assert own_options.status_code == 401 and own_options.json()["redirect"] == REAUTH
    assert "publicKey" not in own_options.json()
    assert planted.status_code == 401 and planted.json()["redirect"] == REAUTH
    assert credentials(client)["passkeys"] == []
    refusals = audits(client, "account.reauth_required")
    assert [(r.detail["action"], r.user_agent) for r in refusals] == [
        ("passkey.options", CHROME_WINDOWS),
        ("passkey.register", CHROME_WINDOWS),
    ]


def test_a_password_only_session_cannot_add_a_passkey_that_skips_the_second_factor(client, clock):
    """A session that signed in with the password alone, before alice turned on her
    authenticator app elsewhere: fresh, but below what she must reach now."""
    sign_in(client)
    give_totp(client, clock)

    response = passkey_options(client)

    assert response.status_code == 403 and response.json()["redirect"] == REAUTH
    assert credentials(client)["passkeys"] == []


# ---- allowed: recent, at the right level ---------------------------------------------------------------


def test_without_a_second_factor_a_fresh_password_session_may_add_one(client, clock):
    client.headers["user-agent"] = CHROME_WINDOWS
    sign_in(client)
    secret = begin_setup(client)
    confirmed = post(client, "/account/totp/confirm", code=totp_code(secret, clock))
    assert confirmed.status_code == 200 and "Save your backup codes" in confirmed.text

    for kind in ("mfa.totp.setup_started", "mfa.totp.enabled", "mfa.backup_codes.generated"):
        (event,) = audits(client, kind)
        assert event.user_id == user_id(client) and event.outcome == "success"
        assert event.user_agent == CHROME_WINDOWS and event.ip == "testclient"
    assert audits(client, "mfa.backup_codes.generated")[0].detail["count"] == 10
    assert audits(client, "account.reauth_required") == []


def test_without_a_second_factor_a_fresh_password_session_may_add_a_passkey(client):
    client.headers["user-agent"] = CHROME_WINDOWS
    sign_in(client)

    add_passkey(client, "Work laptop")

    (event,) = audits(client, "passkey.added")
    assert event.outcome == "success" and event.detail["name"] == "Work laptop"
    assert event.user_agent == CHROME_WINDOWS
    assert len(credentials(client)["passkeys"]) == 1


def test_with_a_second_factor_an_mfa_session_may_add_more(client, clock):
    sign_in(client)
    secret = give_totp(client, clock)
    sign_in_with_code(client, secret, clock.time())  # the chain renews this browser's session at mfa
    clock.advance(30)
    assert session_level(client) == "mfa"
    old_codes = credentials(client)["backup_codes"]

    add_passkey(client)
    regenerated = post(client, "/account/backup-codes", password=PASSWORD, code=totp_code(secret, clock))

    assert regenerated.status_code == 200 and "Save your backup codes" in regenerated.text
    assert len(credentials(client)["passkeys"]) == 1
    assert credentials(client)["backup_codes"] != old_codes
    assert len(audits(client, "passkey.added")) == len(audits(client, "mfa.backup_codes.regenerated")) == 1


def test_a_passkey_session_is_phishing_resistant_and_may_set_up_totp(client, clock):
    """phr (a verified passkey) is above mfa: a passkey user's own passkey sign-in may add
    an authenticator app."""
    sign_in(client)
    give_passkey(client)
    set_session_level(client, "phr")

    secret = begin_setup(client)
    confirmed = post(client, "/account/totp/confirm", code=totp_code(secret, clock))

    assert confirmed.status_code == 200
    assert credentials(client)["totp"][0][1] is True


def test_removing_and_renaming_are_not_held_to_the_level(client, clock):
    """Only additions need the user's level (a removal needs a recent sign-in, as before):
    a fresh password session of a passkey user still manages the list."""
    sign_in(client)
    add_passkey(client)
    (passkey,) = db_passkey_ids(client)

    assert post(client, f"/account/passkeys/{passkey}/rename", name="Old laptop").status_code == 303
    assert post(client, f"/account/passkeys/{passkey}/remove").status_code == 303
    assert credentials(client)["passkeys"] == []


def db_passkey_ids(client: TestClient) -> list[int]:
    with services_of(client).sessions() as db:
        return list(db.scalars(select(Passkey.id).where(Passkey.user_id == user_id(client))))


# ---- recent security activity on /account ---------------------------------------------------------------

ACTIVITY_ITEM = re.compile(r'<li class="activity-item" data-kind="([a-z_.]+)">(.*?)</li>', re.DOTALL)


def activity_on(html: str) -> list[tuple[str, str]]:
    """(audit kind, the item's text) of each listed change, in page order."""
    return [(m.group(1), " ".join(re.sub(r"<[^>]+>", " ", m.group(2)).split())) for m in ACTIVITY_ITEM.finditer(html)]


def test_recent_security_activity_lists_each_change_with_time_and_device(app, client, clock):
    client.headers["user-agent"] = CHROME_WINDOWS
    sign_in(client)
    secret = begin_setup(client)
    post(client, "/account/totp/confirm", code=totp_code(secret, clock))
    clock.advance(30)
    sign_in_with_code(client, secret, clock.time())
    clock.advance(30)
    add_passkey(client, "Work laptop")
    phone = browser(app, SAFARI_IPHONE)
    sign_in_with_code(phone, secret, clock.time())
    clock.advance(30)
    assert post(phone, "/account/backup-codes", password=PASSWORD, code=totp_code(secret, clock)).status_code == 200
    clock.advance(30)
    assert post(client, "/account/totp/disable", password="not it", code="000000").status_code == 401  # no change
    sign_in(browser(app, FIREFOX_LINUX), "bob")
    assert (
        post(
            client,
            "/account/password",
            current_password=PASSWORD,
            new_password="plum tractor velvet orbit",
            confirm_password="plum tractor velvet orbit",
        ).status_code
        == 303
    )

    page = client.get("/account")

    assert "Recent security activity" in page.text
    listed = activity_on(page.text)
    assert [kind for kind, _ in listed] == [  # the newest first; failures and set-up starts are no change
        "password.changed",
        "mfa.backup_codes.regenerated",
        "passkey.added",
        "mfa.backup_codes.generated",
        "mfa.totp.enabled",
    ]
    texts = dict(listed)
    assert "Password changed" in texts["password.changed"] and "Chrome on Windows" in texts["password.changed"]
    assert "New backup codes generated" in texts["mfa.backup_codes.regenerated"]
    assert "Safari on iPhone" in texts["mfa.backup_codes.regenerated"]
    assert "Passkey added" in texts["passkey.added"] and "Work laptop" in texts["passkey.added"]
    assert "Authenticator app turned on" in texts["mfa.totp.enabled"]
    for _, text in listed:
        assert re.search(UTC_TIME, text) and "IP testclient" in text


def test_the_activity_list_keeps_the_last_ten_of_the_users_own(client):
    sign_in(client)
    services, uid, bob = services_of(client), user_id(client), user_id(client, "bob")
    with services.sessions.begin() as db:
        for number in range(12):
            record_audit(
                db,
                "passkey.added",
                user_id=uid,
                outcome="success",
                user_agent=FIREFOX_LINUX,
                passkey=number,
                name=f"Key {number}",
            )
        record_audit(db, "passkey.added", user_id=bob, outcome="success", name="Bob's key")
        record_audit(db, "passkey.removed", user_id=uid, outcome="failure", name="Key 0")

    listed = activity_on(client.get("/account").text)

    assert [re.search(r"“(Key \d+)”", text).group(1) for _, text in listed] == [  # type: ignore[union-attr]
        f"Key {n}" for n in range(11, 1, -1)
    ]
    assert all("Firefox on Linux" in text for _, text in listed)


def test_a_new_account_has_no_activity_yet(client):
    sign_in(client)
    page = client.get("/account").text
    assert "Recent security activity" in page and activity_on(page) == []
    assert "No changes to how you sign in yet." in page
