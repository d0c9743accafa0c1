"""The `email_verified` claim (OIDC Core §5.1) is the flag an admin set with `idp user add
--email-verified` / `idp user set --email-verified`, in the ID token, at userinfo and in the ID
token of a refresh; changing the address clears it."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from idp.users import UserChanges, update_user
from tests.support.rp import decode_id_token, refresh, tokens_for


def set_alice(app: Starlette, **changes: Any) -> None:
    with app.state.services.sessions.begin() as db:
        update_user(db, "alice", UserChanges(**changes))


def emitted(client: TestClient) -> list[tuple[str, object]]:
    """(email, email_verified) from the ID token, userinfo and the refreshed ID token."""
    tokens = tokens_for(client)
    id_token = decode_id_token(client, tokens["id_token"])
    userinfo = client.get("/userinfo", headers={"authorization": f"Bearer {tokens['access_token']}"}).json()
    refreshed = refresh(client, tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    again = decode_id_token(client, refreshed.json()["id_token"])
    return [(claims["email"], claims["email_verified"]) for claims in (id_token, userinfo, again)]


def test_an_address_nobody_verified_is_emitted_as_unverified(client: TestClient) -> None:
    assert emitted(client) == [("alice@example.com", False)] * 3


def test_an_address_the_admin_verified_is_emitted_as_verified(app: Starlette, client: TestClient) -> None:
    set_alice(app, email_verified=True)
    assert emitted(client) == [("alice@example.com", True)] * 3


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"email": "alice@new.example"}, id="a new address"),
        pytest.param({"email_verified": False}, id="verification withdrawn"),
    ],
)
def test_a_verification_cleared_by_the_admin_is_no_longer_claimed(
    app: Starlette, client: TestClient, changes: dict[str, Any]
) -> None:
    set_alice(app, email_verified=True)
    set_alice(app, **changes)
    [(_, verified)] = set(emitted(client))
    assert verified is False
