"""`unmet_authentication_requirements` (OpenID Connect's registered error) from anywhere in
the login chain (issue 16 item 9): when the level asked for can no longer be reached by this
user (phr without a passkey), every step's page and form send the RP its error, state and
iss to the redirect_uri verified when the request was parked. The chain used to answer only
from /login and the password POST; a step page or form of a chain whose only way on had gone
(its passkey removed, or the client's level raised to phr while the user was at the code
step) ended on a 400 page inside the chain, and the RP never heard back."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from sqlalchemy import delete, select, update
from starlette.testclient import TestClient

from idp.db.models import Client, Passkey
from tests.conftest import ISSUER
from tests.login.test_chain import enrol_totp
from tests.login.test_passkey_login import csrf_token, sign_in_options, with_passkey
from tests.login.test_transaction_binding import login_page_url, post_password, sets_session, tx_of
from tests.support.authenticator import SoftAuthenticator
from tests.support.rp import SHOP_REDIRECT, AuthRequest, form_value

UNMET = "unmet_authentication_requirements"


def answer_at_the_rp(location: str, request: AuthRequest) -> dict[str, list[str]]:
    """The RP's redirect_uri with the error, this request's state and idp's iss (RFC 9207)."""
    assert location.startswith(SHOP_REDIRECT + "?"), location
    answer = parse_qs(urlsplit(location).query)
    assert answer["error"] == [UNMET] and answer["state"] == [request.state] and answer["iss"] == [ISSUER], answer
    assert "code" not in answer
    return answer


def raise_shops_level(client: TestClient, level: str) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == "shop"))
        db.execute(
            update(Client).where(Client.id == row.id).values(config={**row.config, "default_acr_values": [level]})
        )
    services.oidc.clients.reload()


# ---- a phr chain whose passkey went away: a password-only user at the passkey step ----------------


def at_the_passkey_step_without_a_passkey(client: TestClient, request: AuthRequest) -> str:
    """alice asks for phr with a passkey, passes the password, is sent to the passkey step;
    then her passkey is removed (another tab, an admin): she is a password-only user."""
    with_passkey(client, SoftAuthenticator())
    tx = tx_of(login_page_url(client, request))
    onward = post_password(client, tx, "alice")
    assert onward.status_code == 303 and onward.headers["location"] == f"/login/passkey?tx={tx}", onward.text[:300]
    with client.app.state.services.sessions.begin() as db:  # type: ignore[attr-defined]
        db.execute(delete(Passkey))
    return tx


def test_the_passkey_steps_page_of_a_phr_chain_without_a_passkey_answers_the_rp_not_a_400_page(client):
    request = AuthRequest(extra={"acr_values": "phr"})
    tx = at_the_passkey_step_without_a_passkey(client, request)
    page = client.get(f"/login/passkey?tx={tx}", follow_redirects=False)
    assert page.status_code == 303, (page.status_code, page.text[:300])
    answer_at_the_rp(page.headers["location"], request)
    assert client.get(f"/login/passkey?tx={tx}").status_code == 400  # answered once: the transaction is gone


def test_the_passkey_steps_verify_of_a_phr_chain_without_a_passkey_answers_the_rp(client):
    request = AuthRequest(extra={"acr_values": "phr"})
    tx = at_the_passkey_step_without_a_passkey(client, request)
    token = csrf_token(client)
    options = sign_in_options(client, token, tx).json()
    stranger = SoftAuthenticator()  # whatever the browser sends, this chain can no longer reach phr
    stranger.new_credential(user_handle=b"h" * 32)
    verify = client.post(
        "/login/passkey/verify",
        json={
            "csrf_token": token,
            "tx": tx,
            "challenge_id": options["challenge_id"],
            "credential": stranger.get({**options["publicKey"], "allowCredentials": []}),
        },
    )
    assert verify.status_code == 200, verify.text
    # JSON cannot carry the ending: the browser is sent to the first step's page, which ends it
    ending = verify.json()["redirect"]
    assert ending == f"/login?tx={tx}"
    answer_at_the_rp(client.get(ending, follow_redirects=False).headers["location"], request)


# ---- the client's level raised to phr while a password + TOTP user is at the code step ------------


def at_the_code_step(client: TestClient, request: AuthRequest) -> str:
    enrol_totp(client, "alice")
    tx = tx_of(login_page_url(client, request))
    onward = post_password(client, tx, "alice")
    assert onward.headers["location"] == f"/login/totp?tx={tx}", onward.text[:300]
    raise_shops_level(client, "phr")  # alice has no passkey: phr is out of her reach
    return tx


def _get(client: TestClient, step: str, tx: str) -> Any:
    return client.get(f"/login/{step}?tx={tx}", follow_redirects=False)


def _post(client: TestClient, step: str, tx: str) -> Any:
    fields = {"code": "000000"} if step == "totp" else {"backup_code": "AAAA-AAAA"}  # not even looked at
    return client.post(
        f"/login/{step}", data={"csrf_token": csrf_token(client), "tx": tx, **fields}, follow_redirects=False
    )


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda c, tx: _get(c, "totp", tx), id="the code step's page"),
        pytest.param(lambda c, tx: _get(c, "backup_code", tx), id="the backup-code step's page"),
        pytest.param(lambda c, tx: _post(c, "totp", tx), id="the code step's form"),
        pytest.param(lambda c, tx: _post(c, "backup_code", tx), id="the backup-code step's form"),
    ],
)
def test_a_level_out_of_reach_at_the_code_step_answers_the_rp_not_a_400_page(client, answer):
    request = AuthRequest()
    tx = at_the_code_step(client, request)
    response = answer(client, tx)
    assert response.status_code == 303, (response.status_code, response.text[:300])
    answer_at_the_rp(response.headers["location"], request)
    assert not sets_session(response)


def test_a_right_code_at_an_unreachable_level_signs_nobody_in(client):
    request = AuthRequest()
    secret = enrol_totp(client, "alice")
    tx = tx_of(login_page_url(client, request))
    post_password(client, tx, "alice")
    raise_shops_level(client, "phr")
    services = client.app.state.services
    code = pyotp.TOTP(secret).at(services.clock.time() + 30)
    response = client.post(
        "/login/totp", data={"csrf_token": csrf_token(client), "tx": tx, "code": code}, follow_redirects=False
    )
    answer_at_the_rp(response.headers["location"], request)
    assert not sets_session(response) and "idp_session" not in client.cookies


def test_form_post_gets_the_error_as_a_form_to_the_rps_origin_only(client):
    request = AuthRequest(extra={"response_mode": "form_post"})
    tx = at_the_code_step(client, request)
    page = _get(client, "totp", tx)
    assert page.status_code == 200 and f'action="{SHOP_REDIRECT}"' in page.text, page.text[:500]
    assert form_value(page.text, "error") == UNMET and form_value(page.text, "state") == request.state
    assert "form-action https://shop.example;" in page.headers["content-security-policy"]
