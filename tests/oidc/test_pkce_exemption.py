"""PKCE stays required by default; `require_pkce = false` exempts a confidential client
whose RP software cannot send it (issue 14, RFC 9700 §2.1.1): such a request must carry a
nonce, each authorization without PKCE is audited, a code issued with a challenge still
needs its verifier, `plain` stays refused, and `idp clients sync` warns."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, update

from idp.clients_file import ClientsFileError
from idp.clients_sync import sync_clients_file
from idp.db.models import AuditEvent, Client
from tests.support.rp import SHOP, AuthRequest, follow_to_client, query_of, start
from tests.support.seed import _toml_with_inline_jwks


def exempt_shop(client) -> None:  # type: ignore[no-untyped-def]
    services = client.app.state.services
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == "shop"))
        db.execute(update(Client).where(Client.id == row.id).values(config={**row.config, "require_pkce": False}))
    services.oidc.clients.reload()


def without_pkce(**extra: str | None) -> AuthRequest:
    return AuthRequest(extra={"code_challenge": None, "code_challenge_method": None, **extra})  # type: ignore[dict-item]


def code_for(client, request: AuthRequest) -> str:  # type: ignore[no-untyped-def]
    location = follow_to_client(client, start(client, request))
    params = query_of(location)
    assert "code" in params, params
    return params["code"]


def redeem_without_verifier(client, request: AuthRequest, code: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": request.redirect_uri},
        auth=SHOP,
    )


def test_by_default_a_confidential_client_without_pkce_is_refused(client):
    location = start(client, without_pkce()).headers["location"]
    assert query_of(location)["error"] == "invalid_request" and "PKCE" in query_of(location)["error_description"]


def test_an_exempt_client_without_pkce_signs_in_with_a_nonce_and_is_audited(client):
    exempt_shop(client)
    request = without_pkce()
    code = code_for(client, request)
    tokens = redeem_without_verifier(client, request, code)
    assert tokens.status_code == 200, tokens.text
    with client.app.state.services.sessions() as db:
        audited = db.scalars(select(AuditEvent).where(AuditEvent.kind == "authorize.without_pkce")).all()
    assert [(a.client_id, a.outcome) for a in audited] == [("shop", "success")]


def test_an_exempt_client_without_pkce_must_send_a_nonce(client):
    exempt_shop(client)
    location = start(client, without_pkce(nonce=None)).headers["location"]
    params = query_of(location)
    assert params["error"] == "invalid_request" and "nonce" in params["error_description"]


def test_a_code_issued_with_a_challenge_still_needs_its_verifier(client):
    exempt_shop(client)
    request = AuthRequest()  # with PKCE
    code = code_for(client, request)
    downgraded = redeem_without_verifier(client, request, code)
    assert downgraded.status_code == 400 and downgraded.json()["error"] == "invalid_request"
    wrong = client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": request.redirect_uri,
            "code_verifier": "w" * 50,
        },
        auth=SHOP,
    )
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"


def test_a_verifier_for_a_code_issued_without_a_challenge_is_refused(client):
    """RFC 9700 §4.8: a verifier where no challenge was sent is an injected code."""
    exempt_shop(client)
    request = without_pkce()
    code = code_for(client, request)
    sent = client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": request.redirect_uri,
            "code_verifier": "v" * 50,
        },
        auth=SHOP,
    )
    assert sent.status_code == 400 and sent.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    "extra",
    [
        {"code_challenge_method": "plain"},
        {"code_challenge_method": None},
        {"code_challenge": None, "code_challenge_method": "S256"},
    ],
    ids=["plain", "challenge without method (plain)", "method without challenge"],
)
def test_plain_and_half_pkce_stay_refused_even_for_an_exempt_client(client, extra):
    exempt_shop(client)
    params = query_of(start(client, AuthRequest(extra=extra)).headers["location"])  # type: ignore[arg-type]
    assert params["error"] == "invalid_request", params


def test_a_public_client_is_never_exempt_even_if_its_stored_config_says_so(client):
    services = client.app.state.services
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == "spa"))
        db.execute(update(Client).where(Client.id == row.id).values(config={**row.config, "require_pkce": False}))
    services.oidc.clients.reload()
    request = AuthRequest(
        client_id="spa",
        redirect_uri="http://localhost:5173/callback",
        scope="openid",
        extra={"code_challenge": None, "code_challenge_method": None},
    )  # type: ignore[dict-item]
    assert query_of(start(client, request).headers["location"])["error"] == "invalid_request"


# ---- idp clients sync: the warning, and the empty file ------------------------------------------


def test_sync_warns_for_each_client_without_pkce(client, tmp_path: Path):
    services = client.app.state.services
    path = tmp_path / "clients.toml"
    path.write_text(
        _toml_with_inline_jwks().replace('client_name = "Shop"\n', 'client_name = "Shop"\nrequire_pkce = false\n')
    )
    report = sync_clients_file(services.sessions, services.keyring, str(path))
    pkce = [warning for warning in report.warnings if "require_pkce" in warning]
    assert len(pkce) == 1 and pkce[0].startswith('client "shop": require_pkce = false')


def test_an_empty_clients_file_removes_nothing_unless_allowed(client, tmp_path: Path):
    services = client.app.state.services
    path = tmp_path / "clients.toml"
    path.write_text("# truncated by a bad deploy\n")
    with pytest.raises(ClientsFileError, match="no clients in the file.*--allow-empty"):
        sync_clients_file(services.sessions, services.keyring, str(path))
    with services.sessions() as db:
        assert len(db.scalars(select(Client)).all()) == 4  # nothing changed
    report = sync_clients_file(services.sessions, services.keyring, str(path), allow_empty=True)
    assert len(report.removed) == 4


def test_an_empty_clients_file_stops_start_up(settings, tmp_path: Path):
    from dataclasses import replace

    from idp.app import create_app
    from idp.state.memory import MemoryStore

    path = tmp_path / "clients.toml"
    path.write_text("")
    with pytest.raises(ClientsFileError, match="no clients"):
        create_app(replace(settings, clients_file=str(path)), store=MemoryStore())
