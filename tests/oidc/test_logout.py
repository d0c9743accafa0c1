"""Logout: OpenID Connect RP-Initiated Logout 1.0 (the end_session_endpoint, /logout) and
Back-Channel Logout 1.0 (logout tokens POSTed to the RPs a session signed into)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jwt as pyjwt
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey
from sqlalchemy import select, update
from starlette.testclient import TestClient

from idp.db.models import AuditEvent, Client, IdpSession
from idp.oidc.clients import RegisteredClient
from idp.oidc.logout import InvalidHint, allowed_redirect, check_hint
from idp.web import backchannel
from tests.conftest import ISSUER
from tests.support.rp import (
    AuthRequest,
    decode_id_token,
    form_value,
    redeem,
    refresh,
    sign_in_and_get_code,
    start,
)
from tests.support.seed import RP_KEY

SIGNED_OUT = "https://shop.example/signed-out"
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"


# -- helpers -------------------------------------------------------------------------------


def configure(client: TestClient, client_id: str, **fields: Any) -> None:
    """Changes a client's stored registration (as a `clients sync` would) and reloads it."""
    services = client.app.state.services
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == client_id))
        db.execute(update(Client).where(Client.id == row.id).values(config={**row.config, **fields}))
    services.oidc.clients.reload()


def session_row(client: TestClient, cookie: str) -> IdpSession:
    services = client.app.state.services
    with services.sessions.begin() as db:
        row = db.scalar(select(IdpSession).where(IdpSession.cookie_digest == services.keyring.digest(cookie)))
        assert row is not None
        db.expunge(row)
        return row


def session_by_sid(client: TestClient, sid: str) -> IdpSession:
    services = client.app.state.services
    with services.sessions.begin() as db:
        row = db.scalar(select(IdpSession).where(IdpSession.sid == sid))
        assert row is not None
        db.expunge(row)
        return row


def audit_events(client: TestClient, kind: str) -> list[AuditEvent]:
    services = client.app.state.services
    with services.sessions.begin() as db:
        rows = list(db.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))
        for row in rows:
            db.expunge(row)
        return rows


def sign_in(client: TestClient, *, username: str = "alice", scope: str = "openid profile email") -> dict[str, Any]:
    """Signs in through shop; the token response plus the ID token's claims under 'claims'."""
    request, code = sign_in_and_get_code(client, AuthRequest(scope=scope), username=username)
    response = redeem(client, request, code)
    assert response.status_code == 200, response.text
    tokens = response.json()
    tokens["claims"] = decode_id_token(client, tokens["id_token"])
    return tokens


def logout(client: TestClient, **params: str):  # type: ignore[no-untyped-def]
    return client.get("/logout", params=params, follow_redirects=False)


def asks_for_login(client: TestClient) -> bool:
    return start(client, AuthRequest()).headers["location"].startswith("/login")


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def signed_by_idp(client: TestClient, claims: dict[str, Any], **header: Any) -> str:
    key = client.app.state.services.oidc.keys.get().signing_key
    return jwt.encode({"alg": "RS256", "kid": key.kid, **header}, claims, key, ["RS256"])


def is_confirmation_page(response) -> bool:  # type: ignore[no-untyped-def]
    return (
        response.status_code == 200
        and 'action="/logout?confirm=1"' in response.text
        and 'name="csrf_token"' in response.text
    )


def is_signed_out_page(response) -> bool:  # type: ignore[no-untyped-def]
    return response.status_code == 200 and "You are signed out" in response.text


# -- check_hint ------------------------------------------------------------------------------


def test_a_real_id_token_is_a_valid_hint(client):
    tokens = sign_in(client)
    hint = check_hint(client.app.state.services.oidc, tokens["id_token"])
    assert hint.client_id == "shop"
    assert hint.sub == tokens["claims"]["sub"]
    assert hint.sid == tokens["claims"]["sid"] and hint.sid


def test_an_expired_id_token_of_ours_is_still_a_valid_hint(client, clock):
    """RP-Initiated Logout §2: the OP need not care whether the hint has expired."""
    claims = sign_in(client)["claims"]
    now = int(clock.time())
    expired = signed_by_idp(
        client, {**claims, "iat": now - 7200, "exp": now - 3600, "auth_time": now - 7200}, typ="JWT"
    )
    hint = check_hint(client.app.state.services.oidc, expired)
    assert (hint.client_id, hint.sub, hint.sid) == ("shop", claims["sub"], claims["sid"])


def test_what_is_not_an_id_token_of_ours_is_an_invalid_hint(client):
    tokens = sign_in(client)
    claims = tokens["claims"]
    ctx = client.app.state.services.oidc
    ours = ctx.keys.get().signing_key
    stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger"})
    impostor = RSAKey.generate_key(2048, parameters={"kid": ours.kid})  # same kid, other key
    public_n = ours.as_dict(private=False)["n"]
    bad = {
        "signed by another key": jwt.encode({"alg": "RS256", "kid": "stranger"}, claims, stranger, ["RS256"]),
        "another key with our kid": jwt.encode({"alg": "RS256", "kid": ours.kid}, claims, impostor, ["RS256"]),
        "signed by an RP's key": jwt.encode({"alg": "RS256", "kid": RP_KEY.kid}, claims, RP_KEY, ["RS256"]),
        "another issuer": signed_by_idp(client, {**claims, "iss": "https://evil.example"}),
        "issuer with a trailing slash": signed_by_idp(client, {**claims, "iss": ISSUER + "/"}),
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}.",
        "alg none with our kid": f"{b64({'alg': 'none', 'kid': ours.kid})}.{b64(claims)}.",
        "HS256 keyed with our public key": jwt.encode(
            {"alg": "HS256", "kid": ours.kid}, claims, OctKey.import_key(public_n.encode()), ["HS256"]
        ),
        "tampered payload": ".".join(
            [tokens["id_token"].split(".")[0], b64({**claims, "sub": "someone-else"}), tokens["id_token"].split(".")[2]]
        ),
        "garbage": "this is not a token at all, not even close",
        "three dots of garbage": "aaaaaaaaaaaa.bbbbbbbbbbbbb.cccccccccccc",
        "empty": "",
        "9 kB string": "x" * 9000,
        "9 kB validly signed token": signed_by_idp(client, {**claims, "padding": "p" * 9000}),
        "an access token": tokens["access_token"],
        "a refresh token": tokens["refresh_token"],
        "two audiences": signed_by_idp(client, {**claims, "aud": ["shop", "spa"]}),
        "no sub": signed_by_idp(client, {k: v for k, v in claims.items() if k != "sub"}),
    }
    for name, value in bad.items():
        with pytest.raises(InvalidHint):
            check_hint(ctx, value)
            pytest.fail(f"{name} was accepted as an id_token_hint")


# -- allowed_redirect -----------------------------------------------------------------------


def _shop_with(uris: list[str]) -> RegisteredClient:
    config = {
        "client_id": "shop",
        "token_endpoint_auth_method": "client_secret_basic",
        "post_logout_redirect_uris": uris,
    }
    return RegisteredClient(config, None, None)  # type: ignore[arg-type]


def test_allowed_redirect_is_an_exact_match_only():
    shop = _shop_with([SIGNED_OUT, "https://shop.example/", "https://shop.example/bye?from=idp"])
    for uri in (SIGNED_OUT, "https://shop.example/", "https://shop.example/bye?from=idp"):
        assert allowed_redirect(shop, uri) == uri
    near_misses = [
        SIGNED_OUT + "/",  # trailing slash added
        "https://shop.example",  # trailing slash removed
        "https://SHOP.example/signed-out",  # case of the host
        "https://shop.EXAMPLE/signed-out",
        "https://shop.example/Signed-Out",  # case of the path
        "HTTPS://shop.example/signed-out",  # case of the scheme
        SIGNED_OUT + "?next=https://evil.example",  # extra query string
        SIGNED_OUT + "?",
        "https://shop.example/bye?from=idp&x=1",
        "https://shop.example/bye",
        SIGNED_OUT + "#frag",  # fragment
        SIGNED_OUT + "#",
        "http://shop.example/signed-out",  # http vs https
        "https://shop.example:8443/signed-out",  # another port
        "https://shop.example:443/signed-out",  # the default port spelled out is still not the string
        "https://shop.example@evil.example/",  # userinfo
        "https://shop.example/signed-out@evil.example",
        "https://user@shop.example/signed-out",
        "https://shop.example/signed%2Dout",  # percent-encoded variants
        "https://shop.example/signed-out%2F",
        "https://shop.example%2Fsigned-out",
        "https%3A%2F%2Fshop.example%2Fsigned-out",
        "https://shop%2Eexample/signed-out",
        SIGNED_OUT + "-evil",  # a registered URI as a prefix
        SIGNED_OUT + "/../../evil",
        "https://shop.example/.evil.example",
        "https://shop.example.evil.example/signed-out",
        " " + SIGNED_OUT,  # whitespace
        SIGNED_OUT + " ",
        SIGNED_OUT + "\n",
        "//shop.example/signed-out",
        "/signed-out",
        "https://shop.example/callback",  # the login redirect_uri is not a logout one
    ]
    for uri in near_misses:
        assert allowed_redirect(shop, uri) is None, uri
    assert allowed_redirect(shop, "") is None and allowed_redirect(shop, None) is None
    assert allowed_redirect(None, SIGNED_OUT) is None
    assert allowed_redirect(_shop_with([]), SIGNED_OUT) is None
    unregistered = RegisteredClient({"client_id": "shop", "token_endpoint_auth_method": "none"}, None, None)  # type: ignore[arg-type]
    assert allowed_redirect(unregistered, SIGNED_OUT) is None


# -- /logout end to end ----------------------------------------------------------------------


def test_a_hint_tied_to_the_session_signs_out_at_once_and_redirects_with_state(client):
    configure(client, "shop", post_logout_redirect_uris=[SIGNED_OUT])
    tokens = sign_in(client)
    cookie = client.cookies["idp_session"]
    assert session_row(client, cookie).sid == tokens["claims"]["sid"]

    response = logout(client, id_token_hint=tokens["id_token"], post_logout_redirect_uri=SIGNED_OUT, state="st/ate 1&x")
    assert response.status_code == 303
    assert response.headers["location"] == SIGNED_OUT + "?state=st%2Fate%201%26x"
    assert "no-store" in response.headers["cache-control"]
    set_cookie = response.headers.get("set-cookie", "")
    assert set_cookie.startswith("idp_session=") and "Max-Age=0" in set_cookie
    assert "idp_session" not in client.cookies
    assert session_row(client, cookie).ended_at is not None
    [event] = audit_events(client, "logout")
    assert event.outcome == "success" and event.detail["sid"] == tokens["claims"]["sid"]

    assert asks_for_login(client)
    client.cookies.set("idp_session", cookie)  # the old cookie, replayed, is dead too
    assert asks_for_login(client)


def test_a_tied_hint_without_state_redirects_to_the_bare_uri(client):
    configure(client, "shop", post_logout_redirect_uris=[SIGNED_OUT])
    tokens = sign_in(client)
    response = logout(client, id_token_hint=tokens["id_token"], post_logout_redirect_uri=SIGNED_OUT)
    assert response.status_code == 303 and response.headers["location"] == SIGNED_OUT
    assert asks_for_login(client)


def test_without_a_hint_the_user_confirms_and_the_form_needs_its_csrf_token(client):
    configure(client, "shop", post_logout_redirect_uris=[SIGNED_OUT])
    sign_in(client)
    cookie = client.cookies["idp_session"]

    page = logout(client, client_id="shop", post_logout_redirect_uri=SIGNED_OUT, state="abc")
    assert is_confirmation_page(page), page.text
    assert "no-store" in page.headers["cache-control"]
    assert session_row(client, cookie).ended_at is None
    assert not asks_for_login(client)

    form = {
        "client_id": form_value(page.text, "client_id"),
        "post_logout_redirect_uri": form_value(page.text, "post_logout_redirect_uri"),
        "state": form_value(page.text, "state"),
    }
    assert form == {"client_id": "shop", "post_logout_redirect_uri": SIGNED_OUT, "state": "abc"}

    refused = client.post("/logout?confirm=1", data=form, follow_redirects=False)
    assert refused.status_code == 403
    refused = client.post(
        "/logout?confirm=1", data={**form, "csrf_token": "forged-" + "x" * 40}, follow_redirects=False
    )
    assert refused.status_code == 403
    assert session_row(client, cookie).ended_at is None
    assert not asks_for_login(client)

    done = client.post(
        "/logout?confirm=1", data={**form, "csrf_token": form_value(page.text, "csrf_token")}, follow_redirects=False
    )
    assert done.status_code == 303 and done.headers["location"] == SIGNED_OUT + "?state=abc"
    assert session_row(client, cookie).ended_at is not None
    assert asks_for_login(client)


def test_without_a_hint_or_client_the_confirmation_leads_to_the_signed_out_page(client):
    sign_in(client)
    cookie = client.cookies["idp_session"]
    page = logout(client)
    assert is_confirmation_page(page)
    for method in ("get", "post"):  # the endpoint itself accepts POST too; still a confirmation
        again = client.request(
            method.upper(),
            "/logout",
            follow_redirects=False,
            **({"data": {"client_id": "shop"}} if method == "post" else {}),
        )
        assert is_confirmation_page(again), method
    assert session_row(client, cookie).ended_at is None
    done = client.post(
        "/logout?confirm=1", data={"csrf_token": form_value(page.text, "csrf_token")}, follow_redirects=False
    )
    assert is_signed_out_page(done)
    assert session_row(client, cookie).ended_at is not None
    assert asks_for_login(client)


def test_a_hint_for_another_session_asks_for_confirmation(client):
    configure(client, "shop", post_logout_redirect_uris=[SIGNED_OUT])
    sign_in(client)
    alice_cookie = client.cookies["idp_session"]
    with TestClient(client.app, base_url=ISSUER) as other:
        bob = sign_in(other, username="bob")
        alice_elsewhere = None
        with TestClient(client.app, base_url=ISSUER) as third:
            alice_elsewhere = sign_in(third)

            for hint in (bob["id_token"], alice_elsewhere["id_token"]):  # another user; same user, other session
                page = logout(client, id_token_hint=hint, post_logout_redirect_uri=SIGNED_OUT, state="s")
                assert is_confirmation_page(page), page.text
                assert session_row(client, alice_cookie).ended_at is None
                assert session_by_sid(client, bob["claims"]["sid"]).ended_at is None
                assert session_by_sid(client, alice_elsewhere["claims"]["sid"]).ended_at is None
                assert not asks_for_login(client)
            assert not asks_for_login(other) and not asks_for_login(third)

            # confirming signs out this browser's session only
            done = client.post(
                "/logout?confirm=1",
                data={"csrf_token": form_value(page.text, "csrf_token"), "client_id": "shop"},
                follow_redirects=False,
            )
            assert is_signed_out_page(done)
            assert session_row(client, alice_cookie).ended_at is not None
            assert session_by_sid(client, bob["claims"]["sid"]).ended_at is None
            assert session_by_sid(client, alice_elsewhere["claims"]["sid"]).ended_at is None
            assert asks_for_login(client)
            assert not asks_for_login(other) and not asks_for_login(third)


def test_an_unregistered_or_near_miss_redirect_shows_the_signed_out_page(client):
    configure(client, "shop", post_logout_redirect_uris=[SIGNED_OUT])
    for uri in (
        "https://evil.example/",
        SIGNED_OUT + "/",
        "https://SHOP.example/signed-out",
        SIGNED_OUT + "?x=1",
        "https://shop.example@evil.example/",
        "http://shop.example/signed-out",
        SIGNED_OUT + "-evil",
        "https://shop.example/callback",
    ):
        tokens = sign_in(client)
        cookie = client.cookies["idp_session"]
        response = logout(client, id_token_hint=tokens["id_token"], post_logout_redirect_uri=uri, state="s")
        assert is_signed_out_page(response), (uri, response.status_code)
        assert "location" not in response.headers
        assert "evil.example" not in response.text
        assert session_row(client, cookie).ended_at is not None  # the logout itself still happens


def test_the_confirmation_page_never_carries_an_unregistered_redirect(client):
    configure(client, "shop", post_logout_redirect_uris=[SIGNED_OUT])
    sign_in(client)
    cookie = client.cookies["idp_session"]
    for params in (
        {"client_id": "shop", "post_logout_redirect_uri": "https://evil.example/"},
        {"client_id": "shop", "post_logout_redirect_uri": SIGNED_OUT + "/"},
        {"post_logout_redirect_uri": SIGNED_OUT},
    ):  # no client to check it against
        page = logout(client, **params, state="s")
        assert is_confirmation_page(page), params
        assert 'name="post_logout_redirect_uri"' not in page.text and "evil.example" not in page.text
    done = client.post(
        "/logout?confirm=1",
        data={
            "csrf_token": form_value(page.text, "csrf_token"),
            "post_logout_redirect_uri": "https://evil.example/",
            "client_id": "shop",
        },
        follow_redirects=False,
    )
    assert is_signed_out_page(done) and "location" not in done.headers
    assert session_row(client, cookie).ended_at is not None


def test_an_expired_hint_tied_to_the_session_still_signs_out_at_once(client, clock):
    configure(client, "shop", post_logout_redirect_uris=[SIGNED_OUT])
    tokens = sign_in(client)
    cookie = client.cookies["idp_session"]
    now = int(clock.time())
    expired = signed_by_idp(client, {**tokens["claims"], "iat": now - 7200, "exp": now - 3600}, typ="JWT")
    response = logout(client, id_token_hint=expired, post_logout_redirect_uri=SIGNED_OUT)
    assert response.status_code == 303 and response.headers["location"] == SIGNED_OUT
    assert session_row(client, cookie).ended_at is not None


def test_a_redirect_registered_by_another_client_is_refused(client):
    configure(client, "spa", post_logout_redirect_uris=["https://spa.example/bye"])
    configure(client, "shop", post_logout_redirect_uris=[SIGNED_OUT])
    tokens = sign_in(client)  # a shop ID token
    response = logout(client, id_token_hint=tokens["id_token"], post_logout_redirect_uri="https://spa.example/bye")
    assert is_signed_out_page(response)
    assert "location" not in response.headers


def test_contradicting_unknown_or_invalid_parameters_are_400_pages(client, clock):
    configure(client, "shop", post_logout_redirect_uris=[SIGNED_OUT])
    tokens = sign_in(client)
    cookie = client.cookies["idp_session"]
    claims = tokens["claims"]
    now = int(clock.time())
    cases = {
        "client_id contradicts aud": {"id_token_hint": tokens["id_token"], "client_id": "spa"},
        "unknown client_id": {"client_id": "nope"},
        "unknown client_id with a hint": {"id_token_hint": tokens["id_token"], "client_id": "nope"},
        "garbage hint": {"id_token_hint": "garbage-garbage-garbage-garbage"},
        "short hint": {"id_token_hint": "x"},
        "alg none hint": {"id_token_hint": f"{b64({'alg': 'none'})}.{b64(claims)}."},
        "hint from another issuer": {"id_token_hint": signed_by_idp(client, {**claims, "iss": "https://evil.example"})},
        "hint naming an unknown client": {
            "id_token_hint": signed_by_idp(client, {**claims, "aud": "ghost", "exp": now + 60})
        },
        "hint with a list aud": {"id_token_hint": signed_by_idp(client, {**claims, "aud": ["shop", "spa"]})},
        "access token as hint": {"id_token_hint": tokens["access_token"]},
        "non-JSON payload": {"id_token_hint": f"{b64({'alg': 'RS256'})}.bm90IGpzb24.c2ln"},
    }
    for name, params in cases.items():
        response = logout(client, **params, post_logout_redirect_uri=SIGNED_OUT)
        assert response.status_code == 400, (name, response.status_code)
        assert "location" not in response.headers, name
        assert "We could not continue" in response.text, name
        assert session_row(client, cookie).ended_at is None, name
    # the same through a POST to the endpoint
    response = client.post(
        "/logout", data={"id_token_hint": tokens["id_token"], "client_id": "spa"}, follow_redirects=False
    )
    assert response.status_code == 400
    assert session_row(client, cookie).ended_at is None


def test_oversized_parameters_are_400(client):
    tokens = sign_in(client)
    cookie = client.cookies["idp_session"]
    cases = [
        {"id_token_hint": "x" * 9000},
        {"id_token_hint": tokens["id_token"], "state": "s" * 5000},
        {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": "https://shop.example/" + "a" * 5000},
        {"id_token_hint": tokens["id_token"], **{f"p{i}": "v" for i in range(50)}},  # too many parameters
    ]
    for params in cases:
        response = client.get("/logout?" + urlencode(params), follow_redirects=False)
        assert response.status_code == 400, (list(params), response.status_code)
    response = client.post(
        "/logout", data={"id_token_hint": tokens["id_token"], "state": "s" * 70_000}, follow_redirects=False
    )
    assert response.status_code == 400
    response = client.post(
        "/logout",
        content=json.dumps({"id_token_hint": tokens["id_token"]}),
        headers={"content-type": "application/json"},
        follow_redirects=False,
    )
    assert response.status_code == 400
    assert session_row(client, cookie).ended_at is None


def test_logout_without_any_session_is_not_an_error(client):
    configure(client, "shop", post_logout_redirect_uris=[SIGNED_OUT])
    tokens = sign_in(client)
    with TestClient(client.app, base_url=ISSUER) as stranger:  # another browser: no session cookie
        assert is_signed_out_page(logout(stranger))
        assert is_signed_out_page(logout(stranger, client_id="shop"))
        response = logout(stranger, id_token_hint=tokens["id_token"], post_logout_redirect_uri=SIGNED_OUT, state="z")
        assert response.status_code == 303 and response.headers["location"] == SIGNED_OUT + "?state=z"
        response = logout(stranger, client_id="shop", post_logout_redirect_uri=SIGNED_OUT)
        assert response.status_code == 303 and response.headers["location"] == SIGNED_OUT
        response = logout(stranger, client_id="shop", post_logout_redirect_uri="https://evil.example/")
        assert is_signed_out_page(response)
        stranger.cookies.set("idp_session", "not-a-real-session-cookie")
        assert is_signed_out_page(logout(stranger))
    assert session_by_sid(client, tokens["claims"]["sid"]).ended_at is None  # alice's own browser is untouched
    assert not asks_for_login(client)


def test_logout_revokes_the_sessions_refresh_tokens_except_offline_access(client):
    assert "offline_access" in client.app.state.services.oidc.clients.get("shop").scopes
    online = sign_in(client, scope="openid profile")
    offline = sign_in(client, scope="openid profile offline_access")
    assert online["refresh_token"] and offline["refresh_token"]
    assert online["claims"]["sid"] == offline["claims"]["sid"]  # one IdP session
    before = refresh(client, online["refresh_token"])
    assert before.status_code == 200
    online_rt = before.json()["refresh_token"]  # rotated

    response = logout(client, id_token_hint=online["id_token"])
    assert is_signed_out_page(response)

    refused = refresh(client, online_rt)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    kept = refresh(client, offline["refresh_token"])
    assert kept.status_code == 200, kept.text
    assert kept.json()["refresh_token"]


def test_discovery_advertises_logout(client):
    meta = client.get("/.well-known/openid-configuration").json()
    assert meta["end_session_endpoint"] == f"{ISSUER}/logout"
    assert meta["backchannel_logout_supported"] is True
    assert meta["backchannel_logout_session_supported"] is True


# -- back-channel ------------------------------------------------------------------------------


@dataclass
class Receiver:
    status: int = 200
    posts: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""


@contextmanager
def receiver(status: int = 200) -> Iterator[Receiver]:
    """A relying party's backchannel_logout_uri: records each POST, answers `status`."""
    state = Receiver(status=status)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
            with lock:
                state.posts.append({"path": self.path, "body": body, "headers": dict(self.headers)})
            self.send_response(state.status)
            self.send_header("content-length", "0")
            self.send_header("cache-control", "no-store")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/backchannel-logout"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def wait_until(condition, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def drain_deliveries(client: TestClient) -> None:
    """The delivery tasks run on the TestClient's event loop (its portal thread)."""
    client.portal.call(backchannel.wait_for_deliveries, 10.0)


def test_backchannel_logout_posts_a_valid_logout_token(client, clock):
    with receiver(200) as rp:
        configure(client, "shop", backchannel_logout_uri=rp.url)
        tokens = sign_in(client)
        started = time.monotonic()
        response = logout(client, id_token_hint=tokens["id_token"])
        assert is_signed_out_page(response)
        assert time.monotonic() - started < 2.0  # delivery is off the request path
        assert wait_until(lambda: len(rp.posts) >= 1)
        drain_deliveries(client)

        [post] = rp.posts
        assert post["path"] == "/backchannel-logout"
        assert post["headers"]["Content-Type"].startswith("application/x-www-form-urlencoded")
        form = parse_qs(post["body"], strict_parsing=True)
        assert list(form) == ["logout_token"] and len(form["logout_token"]) == 1
        token = form["logout_token"][0]

        header = pyjwt.get_unverified_header(token)
        assert header["typ"] == "logout+jwt" and header["alg"] == "RS256"
        jwks = pyjwt.PyJWKSet.from_dict(client.get("/jwks").json())
        key = next(k for k in jwks.keys if k.key_id == header["kid"])
        claims = pyjwt.decode(
            token,
            key=key.key,
            algorithms=["RS256"],
            audience="shop",
            issuer=ISSUER,
            # PyJWT checks the times against the wall clock; the app's clock is checked below
            options={"require": ["iss", "aud", "iat", "exp", "jti"], "verify_exp": False, "verify_iat": False},
        )
        assert claims["events"] == {BACKCHANNEL_EVENT: {}}
        assert claims["sid"] == tokens["claims"]["sid"]
        assert claims["sub"] == tokens["claims"]["sub"]
        assert "nonce" not in claims
        assert claims["jti"] and isinstance(claims["jti"], str)
        assert claims["iat"] <= clock.time() < claims["exp"] and 0 < claims["exp"] - claims["iat"] <= 300

        [event] = audit_events(client, "logout.backchannel")
        assert event.outcome == "success" and event.client_id == "shop"
        assert event.detail["sid"] == tokens["claims"]["sid"]


def test_backchannel_logout_is_retried_on_a_server_error_and_audited_as_failure(client):
    with receiver(500) as rp:
        configure(client, "shop", backchannel_logout_uri=rp.url)
        tokens = sign_in(client)
        assert is_signed_out_page(logout(client, id_token_hint=tokens["id_token"]))
        assert wait_until(lambda: len(rp.posts) >= 3)
        drain_deliveries(client)
        assert len(rp.posts) == 3
        jtis = {
            pyjwt.decode(parse_qs(p["body"])["logout_token"][0], options={"verify_signature": False})["jti"]
            for p in rp.posts
        }
        assert len(jtis) == 3  # every attempt is a fresh token
        [event] = audit_events(client, "logout.backchannel")
        assert event.outcome == "failure" and event.client_id == "shop"
        assert event.detail["sid"] == tokens["claims"]["sid"]


def test_backchannel_logout_is_not_sent_to_rps_the_session_never_signed_into(client):
    with receiver(200) as rp:
        configure(client, "spa", backchannel_logout_uri=rp.url)  # alice signs into shop only
        tokens = sign_in(client)
        assert is_signed_out_page(logout(client, id_token_hint=tokens["id_token"]))
        drain_deliveries(client)
        time.sleep(0.2)
        assert rp.posts == []
        assert audit_events(client, "logout.backchannel") == []


# ---- sessions ended by the admin's commands ----------------------------------------------------


def run_admin_command(settings: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """`idp …` as the admin runs it, on the same database and master key as the test app."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update(
        IDP_ISSUER=ISSUER,
        IDP_DATABASE_URL=settings.database_url,
        IDP_SECRET_KEY=settings.secret_key,
        IDP_DATA_DIR=settings.data_dir,
    )
    return subprocess.run(
        [str(Path(sys.executable).with_name("idp")), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "command", [["user", "disable", "alice"], ["user", "reset-mfa", "alice"]], ids=["disable", "reset-mfa"]
)
def test_admin_commands_that_end_sessions_deliver_backchannel_logouts_before_returning(client, settings, command):
    with receiver(200) as rp:
        configure(client, "shop", backchannel_logout_uri=rp.url)
        tokens = sign_in(client)
        done = run_admin_command(settings, *command)
        assert done.returncode == 0, done.stderr
        assert "1 session(s) ended; back-channel logouts: 1 delivered, 0 failed" in done.stdout
        [post] = rp.posts  # already there: the command waited for it
        token = parse_qs(post["body"])["logout_token"][0]
        header = pyjwt.get_unverified_header(token)
        assert header["typ"] == "logout+jwt"
        jwks = pyjwt.PyJWKSet.from_dict(client.get("/jwks").json())
        key = next(k for k in jwks.keys if k.key_id == header["kid"])
        claims = pyjwt.decode(token, key=key.key, algorithms=["RS256"], audience="shop", issuer=ISSUER)
        assert claims["sid"] == tokens["claims"]["sid"] and claims["sub"] == tokens["claims"]["sub"]
        assert claims["events"] == {BACKCHANNEL_EVENT: {}}
        [event] = audit_events(client, "logout.backchannel")
        assert event.outcome == "success" and event.detail["sid"] == tokens["claims"]["sid"]


def test_an_rp_refusing_the_admins_logout_is_reported_and_the_user_stays_disabled(client, settings):
    with receiver(500) as rp:
        configure(client, "shop", backchannel_logout_uri=rp.url)
        tokens = sign_in(client)
        done = run_admin_command(settings, "user", "disable", "alice")
        assert done.returncode == 0, done.stderr  # the sessions are ended whatever the RP says
        assert "0 delivered, 1 failed; shop: HTTP 500" in done.stdout
        assert len(rp.posts) == 3  # retried
        assert refresh(client, tokens["refresh_token"]).status_code == 400
        [event] = audit_events(client, "logout.backchannel")
        assert event.outcome == "failure"


def test_an_admin_command_with_no_sessions_to_end_sends_nothing(client, settings):
    with receiver(200) as rp:
        configure(client, "shop", backchannel_logout_uri=rp.url)
        done = run_admin_command(settings, "user", "disable", "alice")
        assert done.returncode == 0, done.stderr
        assert "back-channel" not in done.stdout and rp.posts == []
