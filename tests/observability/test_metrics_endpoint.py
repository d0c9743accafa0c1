"""GET /metrics (idp/web/metrics_endpoint.py): Prometheus text for IDP_METRICS_ALLOWED only
(loopback by default), judged on the real client address worked out with
IDP_TRUSTED_PROXIES, switched off (404) by an empty setting, a bad CIDR refused at start,
and never a name, secret or address from the requests it counts."""

from __future__ import annotations

import pytest

from idp.settings import SettingsError, load_settings
from tests.observability.conftest import MakeClient
from tests.observability.support import LOOPBACK, Samples
from tests.support.rp import SHOP, AuthRequest, start, submit_login, tokens_for
from tests.support.seed import PASSWORD, SHOP_SECRET

OUTSIDE = ("203.0.113.9", 40000)
PROXY = ("127.0.0.1", 40001)
IDP_FAMILIES = {
    "idp_http_requests",
    "idp_http_request_duration_seconds",
    "idp_logins",
    "idp_sign_ins_completed",
    "idp_lockouts",
    "idp_rate_limit_hits",
    "idp_tokens_issued",
    "idp_backchannel_logout_deliveries",
    "idp_audit_events",
}


def assert_forbidden(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 403, response.text
    assert "idp_" not in response.text  # not one figure in the refusal
    assert response.headers["cache-control"].startswith("no-store")


# ---- who may read it ----------------------------------------------------------------------


@pytest.mark.parametrize("peer", [LOOPBACK, ("::1", 5000), ("127.8.9.10", 5000)])
def test_loopback_gets_the_prometheus_text_format_with_every_idp_family(make_client: MakeClient, peer) -> None:
    """Default IDP_METRICS_ALLOWED is 127.0.0.0/8 and ::1: Prometheus on the same host scrapes."""
    client = make_client(client=peer)
    client.get("/healthz")  # at least one request counted

    response = client.get("/metrics")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.headers["cache-control"].startswith("no-store")
    scraped = Samples(response.text)
    assert IDP_FAMILIES <= scraped.families.keys(), sorted(IDP_FAMILIES - scraped.families.keys())
    assert scraped.get("idp_http_requests_total", endpoint="/healthz", method="GET", status="200") >= 1
    assert not [n for n in scraped.values if n[0].endswith("_created")]  # disable_created_metrics()


def test_an_outside_address_is_refused(make_client: MakeClient) -> None:
    """Not in IDP_METRICS_ALLOWED: 403 (the figures tell an attacker how an attack goes)."""
    assert_forbidden(make_client(client=OUTSIDE).get("/metrics"))


def test_through_a_trusted_proxy_the_real_client_is_judged_not_the_proxy(make_client: MakeClient) -> None:
    """nginx on loopback relays an outside client: refused, although the peer is 127.0.0.1."""
    client = make_client(client=PROXY, trusted_proxies=("127.0.0.1/32",))

    assert_forbidden(client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"}))
    # several hops: the first untrusted one from the right is the client
    assert_forbidden(client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1, 203.0.113.9"}))
    # the same proxy without a forwarded client is the client itself, and on loopback
    assert client.get("/metrics").status_code == 200


def test_a_forged_first_x_forwarded_for_line_does_not_make_an_outside_client_local(make_client: MakeClient) -> None:
    """Two field lines are one list (RFC 9110 5.3): the proxy's appended line names the client."""
    client = make_client(client=PROXY, trusted_proxies=("127.0.0.1/32",))

    response = client.get("/metrics", headers=[("X-Forwarded-For", "127.0.0.1"), ("X-Forwarded-For", "203.0.113.9")])

    assert_forbidden(response)


@pytest.mark.parametrize("trusted", [(), ("127.0.0.1/32",)], ids=["no-proxies", "other-proxy-trusted"])
def test_an_untrusted_peer_claiming_loopback_in_x_forwarded_for_is_refused(make_client: MakeClient, trusted) -> None:
    """X-Forwarded-For is believed only from IDP_TRUSTED_PROXIES."""
    client = make_client(client=OUTSIDE, trusted_proxies=trusted)

    assert_forbidden(client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}))
    assert_forbidden(client.get("/metrics", headers={"X-Forwarded-For": "::1"}))


def test_a_custom_allowed_network_admits_its_addresses_and_no_longer_loopback(make_client: MakeClient) -> None:
    """IDP_METRICS_ALLOWED replaces the default rather than adding to it."""
    settings = load_settings(environ={"IDP_METRICS_ALLOWED": "10.0.0.0/8"}, secret_key="k" * 40)
    assert settings.metrics_allowed == ("10.0.0.0/8",)

    inside = make_client(client=("10.1.2.3", 5000), metrics_allowed=settings.metrics_allowed)
    assert inside.get("/metrics").status_code == 200
    loopback = make_client(client=LOOPBACK, metrics_allowed=settings.metrics_allowed)
    assert_forbidden(loopback.get("/metrics"))
    # and through a trusted proxy, the forwarded client is what is inside the network
    proxied = make_client(client=PROXY, metrics_allowed=settings.metrics_allowed, trusted_proxies=("127.0.0.1/32",))
    assert proxied.get("/metrics", headers={"X-Forwarded-For": "10.9.9.9"}).status_code == 200
    assert_forbidden(proxied.get("/metrics", headers={"X-Forwarded-For": "192.168.1.1"}))


def test_an_empty_setting_switches_the_endpoint_off_with_a_404(make_client: MakeClient) -> None:
    """IDP_METRICS_ALLOWED="" means no /metrics at all, even from loopback."""
    settings = load_settings(environ={"IDP_METRICS_ALLOWED": ""}, secret_key="k" * 40)
    assert settings.metrics_allowed == ()

    response = make_client(client=LOOPBACK, metrics_allowed=settings.metrics_allowed).get("/metrics")

    assert response.status_code == 404
    assert "idp_" not in response.text


@pytest.mark.parametrize("value", ["10.0.0.0/33", "loopback", "127.0.0.1/8/8", "10.0.0.0/8,300.1.1.1"])
def test_an_invalid_cidr_stops_start_up_naming_the_setting(value: str) -> None:
    """A typo must not silently leave /metrics open or closed: SettingsError at start."""
    with pytest.raises(SettingsError, match="IDP_METRICS_ALLOWED"):
        load_settings(environ={"IDP_METRICS_ALLOWED": value}, secret_key="k" * 40)


# ---- what it says --------------------------------------------------------------------------


def test_the_output_holds_no_names_secrets_tokens_or_addresses_from_earlier_requests(make_client: MakeClient) -> None:
    """Labels are a closed set (route templates, grant types, audit kinds): nothing a client
    sent — account names, secrets, tokens, paths, addresses — becomes a label."""
    client = make_client(client=PROXY, trusted_proxies=("127.0.0.1/32",), headers={"X-Forwarded-For": "198.51.100.77"})
    client.headers["user-agent"] = "LeakyAgent/9.9"
    url = start(client, AuthRequest()).headers["location"]
    assert submit_login(client, url, username="mallory-the-prober", password=PASSWORD).status_code == 401
    assert submit_login(client, url, username="alice", password="hunter2-wrong-guess").status_code == 401
    tokens = tokens_for(client)
    issued = client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"}, auth=SHOP)
    assert issued.status_code == 200, issued.text
    client.get("/no-such-page-for-alice", params={"login_hint": "alice@example.com"})
    client.get("/account/sessions/424242/end")

    response = client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"})  # the proxy's own scrape

    assert response.status_code == 200
    text = response.text
    for leaked in (
        "alice",
        "mallory",
        "example.com",
        "hunter2",
        PASSWORD,
        SHOP_SECRET,
        tokens["access_token"],
        tokens["refresh_token"],
        issued.json()["access_token"],
        "198.51.100.77",
        "127.0.0.1",
        "LeakyAgent",
        "no-such-page",
        "424242",
        "shop",
    ):
        assert leaked not in text, f"{leaked!r} in /metrics"
