"""Clients and signing keys live in memory and are reloaded off the request path: a
`clients sync` or `keys rotate` on any host reaches a running process within the refresh
interval, without a restart."""

from __future__ import annotations

import time

from starlette.testclient import TestClient

import idp.app
from idp.app import create_app
from idp.clients_file import parse_clients_toml
from idp.clients_sync import sync_clients
from idp.oidc.signing_keys import rotate_signing_key
from idp.state.memory import MemoryStore
from tests.support.rp import AuthRequest, start
from tests.support.seed import seed

NEW_CLIENT = """
[[clients]]
client_id = "late"
redirect_uris = ["https://late.example/cb"]
token_endpoint_auth_method = "none"
scope = "openid"
"""


def _eventually(check, seconds=3.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_a_synced_client_and_a_rotated_key_reach_a_running_app(settings, monkeypatch):
    monkeypatch.setattr(idp.app, "REFRESH_SECONDS", 0.1)
    app = create_app(settings, store=MemoryStore())
    seed(app.state.services)
    services = app.state.services
    with TestClient(app, base_url="http://localhost:8000") as client:
        late = AuthRequest(client_id="late", redirect_uri="https://late.example/cb", scope="openid")
        assert start(client, late).status_code == 400  # not registered yet: an error page
        with services.sessions.begin() as db:
            sync_clients(db, services.keyring, parse_clients_toml(NEW_CLIENT))
            new_kid = rotate_signing_key(db, services.keyring, id_token_ttl_seconds=60).kid
        assert _eventually(lambda: start(client, late).status_code == 303)
        assert _eventually(lambda: new_kid in {k["kid"] for k in client.get("/jwks").json()["keys"]})
