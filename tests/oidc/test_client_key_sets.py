"""private_key_jwt clients registered with a jwks_uri (issue 16): the key set is fetched off the
request path, once per URI at a time, failures are remembered with backoff, an unknown kid
refetches at most once per interval, and no token request waits on the network longer than
REQUEST_WAIT_SECONDS (idp/oidc/client_key_sets.py). Real RPs on loopback (the test issuer is
localhost, so loopback is allowed); SQLite runs requests on the event loop, PostgreSQL in
the threadpool: both are covered by the `client` fixture."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError
from joserfc.jwk import RSAKey
from sqlalchemy import select, update
from starlette.testclient import TestClient

from idp.db.models import Client
from idp.oidc.client_key_sets import (
    BACKOFF_SECONDS,
    KID_REFETCH_SECONDS,
    REQUEST_WAIT_SECONDS,
    ClientKeySets,
    KeySetUnavailable,
)
from idp.security.outbound import Outbound, OutboundPolicy
from tests.conftest import ISSUER
from tests.support.loopback_http import LoopbackServer, answering, loopback_server, stalling, wait_until
from tests.support.seed import RP_KEY

ATTACKER_KEY = RSAKey.generate_key(2048, parameters={"kid": RP_KEY.kid})
FIXED_TEXT = KeySetUnavailable.public_message
# what a request may take beyond REQUEST_WAIT_SECONDS on a loaded test machine
SLACK_SECONDS = 1.0


def jwks_of(*keys: RSAKey) -> dict[str, Any]:
    return {"keys": [key.as_dict(private=False) for key in keys]}


def use_jwks_uri(client: TestClient, uri: str) -> None:
    """The seeded private_key_jwt client ("backend") registered with a jwks_uri instead of jwks."""
    services = client.app.state.services
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == "backend"))
        db.execute(
            update(Client).where(Client.id == row.id).values(config={**row.config, "jwks": None, "jwks_uri": uri})
        )
    services.oidc.clients.reload()


def assertion(key: RSAKey = RP_KEY, kid: str | None = None) -> str:
    now = int(time.time())  # joserfc checks an assertion against the wall clock
    claims = {"iss": "backend", "sub": "backend", "aud": ISSUER, "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex}
    return jwt.encode({"alg": "RS256", "kid": kid or key.kid}, claims, key)


def token_request(client: TestClient, signed: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "scope": "profile",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": signed,
        },
    )


def timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_forged_assertions_against_a_stalling_jwks_uri_do_not_freeze_the_server(client):
    """The issue's attack: forged assertions for a client whose jwks_uri accepts and never
    answers, sent in parallel. Before, each one fetched the URI on the request path (on the
    event loop with SQLite) and /jwks froze for seconds. Now one fetch runs in the background,
    each request waits at most REQUEST_WAIT_SECONDS, and the rest of the server answers."""
    with loopback_server(stalling) as rp:
        use_jwks_uri(client, rp.url())
        answers: list[tuple[Any, float]] = []

        def forge() -> None:
            answers.append(timed(lambda: token_request(client, assertion(ATTACKER_KEY))))

        forgers = [threading.Thread(target=forge) for _ in range(6)]
        for thread in forgers:
            thread.start()
        time.sleep(0.1)
        jwks, jwks_seconds = timed(lambda: client.get("/jwks"))
        discovery, discovery_seconds = timed(lambda: client.get("/.well-known/openid-configuration"))
        for thread in forgers:
            thread.join(30)

        assert jwks.status_code == 200 and discovery.status_code == 200
        assert jwks_seconds < REQUEST_WAIT_SECONDS + SLACK_SECONDS
        assert discovery_seconds < REQUEST_WAIT_SECONDS + SLACK_SECONDS
        assert len(answers) == 6
        assert max(seconds for _, seconds in answers) < REQUEST_WAIT_SECONDS + SLACK_SECONDS
        assert rp.connections == 1  # single flight
        for response, _ in answers:
            assert response.status_code == 400 and response.json()["error"] == "invalid_client"
            assert response.json()["error_description"] == FIXED_TEXT  # no URL, no kid


def test_a_failed_fetch_is_remembered_and_not_retried_within_the_backoff(client):
    """Forged assertions must not make idp hammer (or be slowed by) a failing jwks_uri: after
    one failed fetch, the next request within the backoff answers at once without a fetch."""
    with loopback_server(answering(500, b"down")) as rp:
        use_jwks_uri(client, rp.url())
        first = token_request(client, assertion(ATTACKER_KEY))
        assert first.json()["error"] == "invalid_client" and rp.connections == 1
        second, seconds = timed(lambda: token_request(client, assertion(ATTACKER_KEY)))
        assert rp.connections == 1 and seconds < REQUEST_WAIT_SECONDS
        assert second.json() == {"error": "invalid_client", "error_description": FIXED_TEXT}


def test_unknown_kids_refetch_the_key_set_at_most_once_per_interval(client):
    """Assertions with made-up kids would each make idp fetch the RP's key set again: the
    first unknown kid may (an RP may have rotated), the next ones within the interval do not."""
    with loopback_server(answering(200, jwks_of(RP_KEY))) as rp:
        use_jwks_uri(client, rp.url())
        assert token_request(client, assertion()).status_code == 200
        assert rp.connections == 1
        refused = [token_request(client, assertion(ATTACKER_KEY, kid=f"made-up-{n}")) for n in range(3)]
        assert rp.connections == 2
        assert all(r.json()["error"] == "invalid_client" and "made-up" not in r.text for r in refused)
        assert token_request(client, assertion()).status_code == 200  # the known key still works


def test_a_relying_party_s_new_key_is_fetched_on_its_first_assertion(client):
    served = {"jwks": jwks_of(RP_KEY)}
    new_key = RSAKey.generate_key(2048, parameters={"kid": "rp-key-2"})

    def current(server: LoopbackServer, conn: Any) -> None:
        answering(200, served["jwks"])(server, conn)

    with loopback_server(current) as rp:
        use_jwks_uri(client, rp.url())
        assert token_request(client, assertion()).status_code == 200
        served["jwks"] = jwks_of(new_key)  # the RP rotates
        assert token_request(client, assertion(new_key)).status_code == 200


def test_the_key_set_fetch_ignores_proxy_settings_in_the_environment(client, monkeypatch):
    """An HTTPS_PROXY/HTTP_PROXY in idp's environment (set for something else) must not route
    the fetch of a client's keys through a proxy that could substitute its own."""
    with loopback_server(answering(200, jwks_of(RP_KEY))) as rp, loopback_server(answering(200, {})) as proxy:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, proxy.url("/"))
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        use_jwks_uri(client, rp.url())
        response = token_request(client, assertion())
        assert (rp.connections, proxy.connections) == (1, 0)
        assert response.status_code == 200


def test_a_jwks_uri_on_the_metadata_address_is_never_fetched(client):
    """SSRF through registration: a jwks_uri pointing at 169.254.169.254 is refused at once."""
    use_jwks_uri(client, "http://169.254.169.254/latest/meta-data/")
    response, seconds = timed(lambda: token_request(client, assertion(ATTACKER_KEY)))
    assert seconds < REQUEST_WAIT_SECONDS + SLACK_SECONDS
    assert response.json() == {"error": "invalid_client", "error_description": FIXED_TEXT}


# -- the cache on its own, with a clock the test moves ------------------------------------------


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settled(key_sets: ClientKeySets, uri: str) -> bool:
    entry = key_sets._entries.get(uri)
    return entry is not None and entry.flight is None


def test_backoff_doubles_per_failure_and_a_success_clears_it():
    clock = Monotonic()
    served: dict[str, Any] = {"status": 503}

    def current(server: LoopbackServer, conn: Any) -> None:
        answering(served["status"], jwks_of(RP_KEY))(server, conn)

    with loopback_server(current) as rp:
        key_sets = ClientKeySets(Outbound(OutboundPolicy.of((), loopback=True)), monotonic=clock)
        uri = rp.url()
        first, most = BACKOFF_SECONDS
        for failures, wait in enumerate((first, 2 * first, 4 * first), start=1):
            with pytest.raises(KeySetUnavailable):
                key_sets.get(uri, kid=None)
            assert wait_until(lambda: settled(key_sets, uri)) and rp.connections == failures
            clock.now += wait - 0.1
            with pytest.raises(KeySetUnavailable):
                key_sets.get(uri, kid=None)
            assert rp.connections == failures  # still backing off
            clock.now += 0.1
        served["status"] = 200
        assert key_sets.get(uri, kid=RP_KEY.kid).get_by_kid(RP_KEY.kid)
        assert key_sets._entries[uri].failures == 0 and rp.connections == 4


def test_an_expired_key_set_is_served_while_its_refresh_runs_in_the_background():
    clock = Monotonic()
    with loopback_server(answering(200, jwks_of(RP_KEY))) as rp:
        key_sets = ClientKeySets(Outbound(OutboundPolicy.of((), loopback=True)), monotonic=clock)
        uri = rp.url()
        key_sets.get(uri, kid=RP_KEY.kid)
        clock.now += 301  # past FRESH_SECONDS
        key_sets.get(uri, kid=RP_KEY.kid)  # answers from the old set, starts a refresh
        assert wait_until(lambda: rp.connections == 2 and settled(key_sets, uri))
        with pytest.raises(InvalidKeyIdError):
            key_sets.get(uri, kid="unknown").get_by_kid("unknown")
        assert wait_until(lambda: settled(key_sets, uri)) and rp.connections == 3
        clock.now += KID_REFETCH_SECONDS - 1
        key_sets.get(uri, kid="another-unknown")
        assert rp.connections == 3
        clock.now += 1
        key_sets.get(uri, kid="a-third-unknown")
        assert wait_until(lambda: settled(key_sets, uri)) and rp.connections == 4
