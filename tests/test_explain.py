"""`idp explain` against idp itself: for every case of the table (the app's allowed_groups,
the user's groups and their minimum, the user's factors, what the RP asks), the verdict
explain gives equals what happens over HTTP when that user signs in to that app now:
refused with access_denied, refused with unmet_authentication_requirements, the step the
chain asks after the password, or a code at once. explain calls the flow's own policy
functions; this table is what keeps it from drifting into a second opinion."""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import select, update

from idp.db.models import Client, Passkey, User
from idp.explain import explain
from idp.groups import add_group, add_members
from idp.users import disable_user
from tests.login.test_chain import enrol_totp
from tests.support.rp import AuthRequest, follow_to_client, query_of, start, submit_login

# (allowed_groups, the user's groups as (name, min_acr), factors, acr_values)
CASES = [
    (None, [], "", None),
    (None, [], "totp", None),
    (None, [], "passkey", None),
    (None, [], "", "mfa"),
    (None, [], "", "phr"),
    (None, [], "passkey", "phr"),
    (None, [("staff", "mfa")], "", None),
    (None, [("staff", "mfa")], "totp", None),
    (None, [("staff", "mfa")], "passkey", None),
    (None, [("staff", "phr")], "", None),
    (None, [("staff", "phr")], "totp", None),
    (None, [("staff", "phr")], "passkey", None),
    (["staff"], [("staff", None)], "", None),
    (["staff"], [("staff", None)], "totp", "mfa"),
    (["staff"], [], "", None),
    (["staff"], [], "totp", None),
    (["staff"], [("ops", "mfa")], "", None),
    (["staff", "ops"], [("ops", "phr")], "totp", None),
    (None, [], "disabled", None),
]


def _arrange(client, allowed, groups, factors) -> None:  # type: ignore[no-untyped-def]
    services = client.app.state.services
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == "shop"))
        db.execute(update(Client).where(Client.id == row.id).values(config={**row.config, "allowed_groups": allowed}))
        for name in {"staff", "ops"}:
            add_group(db, name, min_acr=dict(groups).get(name))
        for name, _ in groups:
            add_members(db, name, ["alice"])
        if factors == "passkey":
            user_id = db.scalar(select(User.id).where(User.username == "alice"))
            db.add(Passkey(user_id=user_id, credential_id=secrets.token_bytes(16), public_key=b"\x00", name="a key"))
        if factors == "disabled":
            disable_user(db, "alice")
    services.oidc.clients.reload()
    if factors == "totp":
        enrol_totp(client, "alice")


def _over_http(client, acr_values) -> tuple[str, str | None]:  # type: ignore[no-untyped-def]
    """What signing in with the password shows: the outcome, and the step asked next."""
    request = AuthRequest(extra={"acr_values": acr_values} if acr_values else {})
    started = start(client, request)
    if started.status_code == 303 and not started.headers["location"].startswith("/"):
        return query_of(started.headers["location"])["error"], None  # refused before any page
    response = submit_login(client, started.headers["location"])
    if response.status_code == 401:
        return "disabled", None  # a disabled account fails like a wrong password (no enumeration)
    if response.status_code == 403:
        if "error=access_denied" in response.text:
            return "access_denied", None
        assert "error=unmet_authentication_requirements" in response.text, response.text
        return "unmet_authentication_requirements", None
    location = response.headers["location"]
    if location.startswith("/login/"):
        return "code", location.split("?")[0].removeprefix("/login/")
    if not location.startswith("/"):
        error = query_of(location).get("error")
        return error or "code", None
    final = follow_to_client(client, response)
    return ("code" if "code" in query_of(final) else query_of(final)["error"]), None


@pytest.mark.parametrize(("allowed", "groups", "factors", "acr_values"), CASES)
def test_explain_agrees_with_what_idp_does(client, allowed, groups, factors, acr_values) -> None:  # type: ignore[no-untyped-def]
    _arrange(client, allowed, groups, factors)
    services = client.app.state.services
    with services.sessions() as db:
        verdict = explain(
            db,
            lambda db, user: services.factors.factors_of(db, user, count_backup_codes=True),
            "shop",
            "alice",
            acr_values=acr_values,
        )
    predicted_next = verdict.steps[1] if verdict.outcome == "code" and len(verdict.steps) > 1 else None
    assert _over_http(client, acr_values) == (verdict.outcome, predicted_next), verdict
