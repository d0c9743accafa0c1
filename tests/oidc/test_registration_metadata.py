"""Registration metadata idp honours (issue 14): default_max_age stands in for a request's
max_age; the consent page shows the RP's https logo (CSP img-src for exactly that origin,
no referrer), its client_uri, policy_uri and tos_uri."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select, update

from idp.db.models import Client
from tests.support.rp import AuthRequest, start, submit_login


def configure_shop(client, **config: Any) -> None:  # type: ignore[no-untyped-def]
    services = client.app.state.services
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == "shop"))
        db.execute(update(Client).where(Client.id == row.id).values(config={**row.config, **config}))
    services.oidc.clients.reload()


def test_a_clients_default_max_age_asks_for_a_fresh_sign_in_when_the_request_names_none(client, clock):
    submit_login(client, "/login")
    configure_shop(client, default_max_age=0)
    clock.advance(1)  # older than max_age 0
    assert start(client, AuthRequest()).headers["location"].startswith("/login?tx=")
    # a request's own max_age wins over the client's default
    assert not start(client, AuthRequest(extra={"max_age": "3600"})).headers["location"].startswith("/login")


def test_without_default_max_age_an_existing_session_is_used(client):
    submit_login(client, "/login")
    assert not start(client, AuthRequest()).headers["location"].startswith("/login")


def consent_page(client):  # type: ignore[no-untyped-def]
    submit_login(client, "/login")
    consent = start(client, AuthRequest())
    assert consent.headers["location"].startswith("/consent?tx=")
    return client.get(consent.headers["location"])


def test_the_consent_page_shows_the_logo_from_exactly_its_origin_without_a_referrer(client):
    configure_shop(
        client,
        logo_uri="https://cdn.shop.example:8443/logo.png",
        client_uri="https://shop.example/",
        policy_uri="https://shop.example/privacy",
        tos_uri="https://shop.example/terms",
    )
    page = consent_page(client)
    img_src = re.search(r"img-src ([^;]+)", page.headers["content-security-policy"]).group(1)  # type: ignore[union-attr]
    assert img_src.split() == ["'self'", "data:", "https://cdn.shop.example:8443"]
    assert re.search(
        r'<img class="client-logo" src="https://cdn.shop.example:8443/logo.png"[^>]*referrerpolicy="no-referrer"',
        page.text,
    )
    for link in ("https://shop.example/", "https://shop.example/privacy", "https://shop.example/terms"):
        assert re.search(rf'<a href="{re.escape(link)}" rel="noopener noreferrer"', page.text), link


def test_a_consent_page_without_a_logo_loads_images_from_itself_only(client):
    page = consent_page(client)
    assert "img-src 'self' data:;" in page.headers["content-security-policy"] and "<img" not in page.text
