"""The request id and the request log (idp/observability/request_ids.py, access_log.py,
idp/web/observation.py): every response carries X-Request-Id — a fresh random one, or a
trusted proxy's when well formed — the audit rows the request writes carry the same id, and
the `idp.access` logger gets exactly one JSON line per request, with the path but never its
query string, and no way for a client to break the line."""

from __future__ import annotations

import logging
import re

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from idp.audit.trail import record_audit
from idp.db.models import AuditEvent
from idp.logging_config import serve_log_config
from idp.settings import load_settings
from idp.web import health
from tests.observability.conftest import MakeClient
from tests.observability.support import captured, json_lines
from tests.support.rp import AuthRequest, start, submit_login
from tests.support.seed import PASSWORD

OUR_ID = re.compile(r"[0-9a-f]{32}")
PROXY = ("127.0.0.1", 40001)
TRUSTED = ("127.0.0.1/32",)
OUTSIDE = ("203.0.113.9", 40000)
NGINX_ID = "4f1c2a9e0b7d4c3a9e8f7a6b5c4d3e2f"  # nginx's $request_id: 32 hex characters


def request_id_of(response) -> str:  # type: ignore[no-untyped-def]
    values = response.headers.get_list("x-request-id")
    assert len(values) == 1, f"X-Request-Id {values} on {response.request.method} {response.request.url}"
    return values[0]


def raise_in_checks(*args: object) -> None:
    raise RuntimeError("a bug nobody handled")


# ---- every response has one ----------------------------------------------------------------------


def test_every_response_has_a_fresh_request_id_of_32_hex_characters(make_client: MakeClient, monkeypatch) -> None:
    """Including answers made before routing (static documents, the site limit), errors the
    router makes (404, 405) and the 500 for an exception nothing handled."""
    client = make_client(client=("192.0.2.7", 5000), rate_limit_site_ip="12/minute")
    responses = {
        "page": client.get("/login"),
        "redirect": start(client, AuthRequest()),
        "json": client.get("/healthz"),
        "discovery": client.get("/.well-known/openid-configuration"),
        "jwks": client.get("/jwks"),
        "head-jwks": client.head("/jwks"),
        "static-405": client.post("/jwks"),
        "404": client.get("/no/such/page"),
        "405": client.delete("/login"),
        "oauth-error": client.post("/token", data={"grant_type": "nonsense"}),
        "static-file-404": client.get("/static/none.css"),
    }
    monkeypatch.setattr(health, "_checks", raise_in_checks)
    responses["500"] = client.get("/readyz")
    while (refused := client.get("/healthz")).status_code != 429:
        assert len(responses) < 40, "the site limit never refused"
    responses["429"] = refused

    assert {k: r.status_code for k, r in responses.items()} == {
        "page": 200,
        "redirect": 303,
        "json": 200,
        "discovery": 200,
        "jwks": 200,
        "head-jwks": 200,
        "static-405": 405,
        "404": 404,
        "405": 405,
        "oauth-error": 400,
        "static-file-404": 404,
        "500": 500,
        "429": 429,
    }
    ids = {name: request_id_of(response) for name, response in responses.items()}
    for name, value in ids.items():
        assert OUR_ID.fullmatch(value), (name, value)
    assert len(set(ids.values())) == len(ids)  # distinct per request


def test_the_500_for_an_unhandled_exception_is_plain_and_logged_with_its_request_id(
    make_client: MakeClient, monkeypatch
) -> None:
    client = make_client()
    monkeypatch.setattr(health, "_checks", raise_in_checks)
    with captured("idp", logging.ERROR) as errors, captured("idp.access") as access:
        response = client.get("/readyz")

    assert response.status_code == 500
    assert response.text == "Internal error"  # no traceback, no exception text
    assert response.headers["cache-control"] == "no-store"
    request_id = request_id_of(response)
    [error] = [r for r in errors if r.name == "idp"]
    assert request_id in error.getMessage()
    assert error.exc_info is not None and "a bug nobody handled" in str(error.exc_info[1])
    [line] = json_lines(access)
    assert (line["request_id"], line["status"], line["endpoint"]) == (request_id, 500, "/readyz")


# ---- whose id is kept --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "peer, trusted",
    [(OUTSIDE, ()), (OUTSIDE, TRUSTED), (PROXY, ())],
    ids=["no-proxies", "not-the-proxy", "loopback-but-no-proxies-configured"],
)
def test_an_id_sent_by_anyone_but_a_trusted_proxy_is_replaced(make_client: MakeClient, peer, trusted) -> None:
    """An attacker-chosen id could make unrelated requests look related in the logs."""
    client = make_client(client=peer, trusted_proxies=trusted)
    response = client.get("/healthz", headers={"X-Request-Id": NGINX_ID})

    assert request_id_of(response) != NGINX_ID
    assert OUR_ID.fullmatch(request_id_of(response))


@pytest.mark.parametrize("sent", [NGINX_ID, "req-2024.06.01:abc_DEF", "abcdefgh", "a" * 64])
def test_a_well_formed_id_from_a_trusted_proxy_is_kept(make_client: MakeClient, sent: str) -> None:
    """nginx's $request_id is kept, so nginx's log and idp's share it."""
    client = make_client(client=PROXY, trusted_proxies=TRUSTED)
    with captured("idp.access") as access:
        response = client.get("/jwks", headers={"X-Request-Id": sent})

    assert request_id_of(response) == sent
    [line] = json_lines(access)
    assert line["request_id"] == sent


@pytest.mark.parametrize(
    "sent",
    [
        "a" * 65,  # too long
        "abcdefg",  # too short
        "abc def ghi jkl",  # a space
        "abcdefgh\nforged-line",  # a newline
        "abcdefgh1234\n",  # a trailing newline (what `$` in a regex lets through)
        "abcdefgh\r\nX-Injected: 1",
        "abcdefgh\x00nul",
        'abcdefgh"},{"x',
        "abcdefgh/../..",
        b"caf\xc3\xa9-12345678",  # non-ASCII (UTF-8)
        b"caf\xe9-123456789",  # non-ASCII (Latin-1)
        "",
    ],
    ids=[
        "too-long",
        "too-short",
        "space",
        "newline",
        "trailing-newline",
        "crlf",
        "nul",
        "quote",
        "slash",
        "utf8",
        "latin1",
        "empty",
    ],
)
def test_a_malformed_id_even_from_a_trusted_proxy_is_replaced(make_client: MakeClient, sent) -> None:
    client = make_client(client=PROXY, trusted_proxies=TRUSTED)
    with captured("idp.access") as access:
        response = client.get("/healthz", headers={"X-Request-Id": sent})

    assert response.status_code == 200
    assert OUR_ID.fullmatch(request_id_of(response))
    [line] = json_lines(access)
    assert line["request_id"] == request_id_of(response)


# ---- the audit trail carries it --------------------------------------------------------------------


def audit_rows_after(client: TestClient, last_id: int) -> list[AuditEvent]:
    with client.app.state.services.sessions() as db:  # type: ignore[attr-defined]
        rows = list(db.scalars(select(AuditEvent).where(AuditEvent.id > last_id).order_by(AuditEvent.id)))
        db.expunge_all()
        return rows


def last_audit_id(client: TestClient) -> int:
    rows = audit_rows_after(client, 0)
    return rows[-1].id if rows else 0


def test_the_audit_rows_of_a_request_carry_its_request_id(client: TestClient) -> None:
    """From a user's complaint (the id of their response) to the audit rows of that request."""
    url = start(client, AuthRequest()).headers["location"]
    mark = last_audit_id(client)
    failed = submit_login(client, url, password=PASSWORD + "x")
    after_failure = last_audit_id(client)
    signed_in = submit_login(client, url)

    failure_rows = audit_rows_after(client, mark)[: after_failure - mark]
    success_rows = audit_rows_after(client, after_failure)
    assert [r.kind for r in failure_rows] == ["login.password.failed"]
    assert {"login.password.succeeded", "login.succeeded"} <= {r.kind for r in success_rows}
    assert all(r.detail["request_id"] == request_id_of(failed) for r in failure_rows)
    assert all(r.detail["request_id"] == request_id_of(signed_in) for r in success_rows)
    assert request_id_of(failed) != request_id_of(signed_in)


def test_a_trusted_proxys_id_reaches_the_audit_rows(make_client: MakeClient) -> None:
    client = make_client(client=PROXY, trusted_proxies=TRUSTED)
    url = start(client, AuthRequest()).headers["location"]
    mark = last_audit_id(client)
    page = client.get(url)
    csrf = re.search(r'name="csrf_token" value="([^"]*)"', page.text).group(1)  # type: ignore[union-attr]
    tx = re.search(r'name="tx" value="([^"]*)"', page.text).group(1)  # type: ignore[union-attr]
    response = client.post(
        "/login",
        data={"csrf_token": csrf, "tx": tx, "username": "alice", "password": "nope"},
        headers={"X-Request-Id": NGINX_ID, "X-Forwarded-For": "198.51.100.4"},
    )

    assert request_id_of(response) == NGINX_ID
    [row] = audit_rows_after(client, mark)
    assert row.detail["request_id"] == NGINX_ID
    assert row.ip == "198.51.100.4"


def test_an_audit_event_outside_any_request_has_no_request_id(app) -> None:  # type: ignore[no-untyped-def]
    with TestClient(app, base_url="http://localhost:8000") as client:
        client.get("/healthz")  # a request before, on the same app
        mark = last_audit_id(client)
        with app.state.services.sessions.begin() as db:
            record_audit(db, "user.disabled", outcome="success")
        [row] = audit_rows_after(client, mark)
    assert "request_id" not in row.detail


# ---- the request log ----------------------------------------------------------------------------------


def test_one_json_line_per_request_with_the_path_but_not_the_query_string(make_client: MakeClient) -> None:
    """Query strings carry login hints, states and codes: none belong in a log."""
    client = make_client(client=PROXY, trusted_proxies=TRUSTED, headers={"X-Forwarded-For": "198.51.100.23"})
    client.headers["user-agent"] = "ObsTest/1.0"  # replaces TestClient's own (one header, not two)
    request = AuthRequest(extra={"login_hint": "alice@example.com"})
    with captured("idp.access") as access:
        authorize = start(client, request)
        jwks = client.get("/jwks", params={"secret": "s3cr3t-in-query"})
        missing = client.get("/nowhere", params={"code": "abc"})
        session_end = client.post("/account/sessions/42/end")

    lines = json_lines(access)
    assert len(lines) == 4
    responses = [authorize, jwks, missing, session_end]
    expected = [
        ("GET", "/authorize", "/authorize"),
        ("GET", "/jwks", "/jwks"),
        ("GET", "/nowhere", "unmatched"),
        ("POST", "/account/sessions/42/end", "/account/sessions/{session_id:int}/end"),
    ]
    for line, response, (method, path, endpoint) in zip(lines, responses, expected, strict=True):
        assert line["event"] == "request"
        assert line["request_id"] == request_id_of(response)
        assert (line["method"], line["path"], line["endpoint"]) == (method, path, endpoint)
        assert line["status"] == response.status_code
        assert isinstance(line["duration_ms"], (int, float)) and line["duration_ms"] >= 0
        assert line["ip"] == "198.51.100.23"  # the client, not the proxy
        assert line["user_agent"] == "ObsTest/1.0"
        assert line["at"]
    raw = "\n".join(r.getMessage() for r in access)
    for secret in ("alice@example.com", "login_hint", "s3cr3t-in-query", request.state, request.nonce, "?"):
        assert secret not in raw


def test_the_logged_ip_is_the_peer_when_it_is_not_a_trusted_proxy(make_client: MakeClient) -> None:
    client = make_client(client=OUTSIDE, trusted_proxies=TRUSTED)
    with captured("idp.access") as access:
        client.get("/healthz", headers={"X-Forwarded-For": "10.0.0.1"})

    [line] = json_lines(access)
    assert line["ip"] == "203.0.113.9"


def test_a_client_cannot_break_the_one_line_json(make_client: MakeClient) -> None:
    """CR, LF, quotes and backslashes in the path or the user agent stay inside one JSON
    string: no forged second line for a log shipper to read."""
    client = make_client()
    forged = '{"event":"request","status":200}'
    with captured("idp.access") as access:
        client.get("/x%0d%0a" + forged.replace('"', "%22") + "%22%5C")
        client.get("/healthz", headers={"User-Agent": b'Agent "quoted" \\ \r\n' + forged.encode()})
        client.get("/healthz", headers={"User-Agent": "Agent\u2028\u2029 caf\u00e9".encode("utf-8")})

    lines = json_lines(access)  # asserts no CR/LF inside a record and that each parses
    assert len(lines) == 3
    assert lines[0]["path"] == "/x\r\n" + forged + '"\\'
    assert lines[0]["endpoint"] == "unmatched"
    assert lines[1]["user_agent"].startswith('Agent "quoted" \\')
    for record in access:
        assert set(record.getMessage()) <= set(map(chr, range(0x20, 0x7F)))  # plain printable ASCII only


def test_long_paths_and_user_agents_are_cut(make_client: MakeClient) -> None:
    client = make_client()
    with captured("idp.access") as access:
        client.get("/" + "p" * 5000, headers={"User-Agent": "u" * 5000})

    [line] = json_lines(access)
    assert len(line["path"]) <= 200 and len(line["user_agent"]) <= 200


def test_no_line_when_the_request_log_is_switched_off(make_client: MakeClient) -> None:
    """IDP_ACCESS_LOG=0: `idp serve`'s logging config sets idp.access to WARNING, and nothing
    is written; 1 (the default) sets it to INFO."""
    assert load_settings(environ={}, secret_key="k" * 40).access_log == 1
    settings = load_settings(environ={"IDP_ACCESS_LOG": "0"}, secret_key="k" * 40)
    assert settings.access_log == 0
    off = serve_log_config(access_log=bool(settings.access_log))["loggers"]["idp.access"]
    on = serve_log_config(access_log=True)["loggers"]["idp.access"]
    assert (logging.getLevelName(off["level"]), logging.getLevelName(on["level"])) == (logging.WARNING, logging.INFO)
    assert off["propagate"] is False and off["handlers"] == [] and on["handlers"] == ["idp_requests"]
    assert "idp_requests" not in serve_log_config(access_log=False)["handlers"]  # so no direct path is set up
    assert serve_log_config()["handlers"]["access"]["formatter"] == "access"  # uvicorn's own, left alone
    handler = serve_log_config()["handlers"]["idp_requests"]  # bare JSON lines on stderr, batched
    assert handler["()"] == "idp.observability.access_log.stderr_handler" and handler["formatter"] == "bare"

    client = make_client()
    with captured("idp.access", logging.getLevelName(off["level"])) as access:
        client.get("/healthz")
    assert access == []
