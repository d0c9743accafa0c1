"""Property tests for hostile input: random parameter sets, raw bodies and raw query strings
sent to every endpoint never produce a 500, and the JSON endpoints always answer an error
with a JSON body carrying `error` (RFC 6749 §5.2, RFC 6750 §3). SQLite only, to stay quick;
the table-driven cases in test_bad_input.py run on both databases."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from idp.db.engine import make_engine
from idp.db.migrate import upgrade
from tests.support.rp import SHOP, AuthRequest, form_value, sign_in_and_get_code

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FORM = {"content-type": "application/x-www-form-urlencoded"}

PARAMETER_NAMES = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "max_age",
    "response_mode",
    "login_hint",
    "id_token_hint",
    "request",
    "request_uri",
    "claims",
    "display",
    "ui_locales",
    "acr_values",
    "registration",
    "grant_type",
    "code",
    "code_verifier",
    "refresh_token",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "token",
    "token_type_hint",
    "access_token",
    "username",
    "password",
    "csrf_token",
    "tx",
    "decision",
]
MEANINGFUL_VALUES = [
    "code",
    "token",
    "id_token",
    "code id_token",
    "shop",
    "spa",
    "portal",
    "backend",
    "https://shop.example/callback",
    "http://localhost:5173/callback",
    "openid",
    "openid profile email offline_access",
    "S256",
    "plain",
    "none",
    "login",
    "consent",
    "-1",
    "0",
    "99999999999",
    "query",
    "fragment",
    "form_post",
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "password",
    "access_token",
    "allow",
    "deny",
    "alice",
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    "eyJhbGciOiJub25lIn0.e30.",
]

# Any text that can be sent as UTF-8: unicode, control characters, NUL; no lone surrogates.
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)
long_text = st.builds(lambda ch, n: ch * n, st.characters(exclude_categories=("Cs",)), st.integers(1000, 6000))
values = st.one_of(st.sampled_from(MEANINGFUL_VALUES), any_text, long_text)
keys = st.one_of(st.sampled_from(PARAMETER_NAMES), any_text.filter(bool), st.text(min_size=90, max_size=200))
parameter_sets = st.dictionaries(keys, values, max_size=45)
# Query strings and bodies built from the pieces that matter to a form decoder.
PIECES = [
    "a",
    "x",
    "0",
    "9",
    "=",
    "&",
    ";",
    "%",
    "+",
    "f",
    "G",
    "%00",
    "%ff",
    "%c3%a9",
    "%e2%80%a8",
    "%2",
    "%zz",
    "tx",
    "client_id",
    "shop",
    "scope",
    "openid",
    "token",
    "state",
]
encoded = st.lists(st.sampled_from(PIECES), max_size=120).map("".join)

ENDPOINTS = ["/authorize", "/token", "/revoke", "/introspect", "/userinfo", "/login", "/consent"]
JSON_ENDPOINTS = {"/token", "/revoke", "/introspect", "/userinfo"}


@pytest.fixture
def database_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    """Overrides the SQLite-and-PostgreSQL fixture of conftest: this module runs on SQLite only."""
    url = f"sqlite:///{tmp_path}/idp.db"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def outside_error_charset(value: str) -> bool:
    """RFC 6749 §4.1.2.1: error_description is limited to %x20-21 / %x23-5B / %x5D-7E."""
    return any(not 0x20 <= ord(ch) <= 0x7E or ch in '"\\' for ch in value)


def send_params(client, path: str, params: dict[str, str]):  # type: ignore[no-untyped-def]
    if path == "/authorize":
        query = urlencode(params)
        assume(len(query) < 60_000)  # longer URLs are refused by the HTTP client (and by any front proxy)
        return client.get(f"{path}?{query}", follow_redirects=False)
    return client.post(path, data=params, follow_redirects=False)


def assert_well_formed_refusal(path: str, response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code < 500, (path, response.status_code, response.text[:300])
    if path in JSON_ENDPOINTS and response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json"), response.headers
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
        assert response.headers["cache-control"] == "no-store"
    if response.headers.get("content-type", "").startswith("text/html"):
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_random_parameters_never_cause_a_server_error(client, path):
    @FUZZ
    @given(params=parameter_sets)
    def check(params: dict[str, str]) -> None:
        assert_well_formed_refusal(path, send_params(client, path, params))

    check()


def test_random_changes_to_a_valid_authorization_request_never_cause_a_server_error(client):
    sign_in_and_get_code(client)  # a signed-in browser with consent: the fuzz reaches code issuance

    @FUZZ
    @given(changes=parameter_sets)
    def check(changes: dict[str, str]) -> None:
        params = {**AuthRequest().params(), **changes}
        assert_well_formed_refusal("/authorize", send_params(client, "/authorize", params))

    check()


@pytest.mark.parametrize("path", ["/token", "/revoke", "/introspect"])
@pytest.mark.parametrize("auth", [pytest.param(SHOP, id="confidential client"), pytest.param(None, id="public client")])
def test_random_parameters_from_a_registered_client_never_cause_a_server_error(client, path, auth):
    @FUZZ
    @given(
        grant_type=st.sampled_from(["authorization_code", "refresh_token", "client_credentials", "password"]),
        params=parameter_sets,
    )
    def check(grant_type: str, params: dict[str, str]) -> None:
        base = {"grant_type": grant_type} if auth else {"grant_type": grant_type, "client_id": "spa"}
        response = client.post(path, data={**base, **params}, auth=auth, follow_redirects=False)
        assert_well_formed_refusal(path, response)

    check()


@pytest.mark.parametrize("path", ["/login", "/consent"])
def test_random_forms_with_a_valid_csrf_token_never_cause_a_server_error(client, path):
    csrf_token = form_value(client.get("/login").text, "csrf_token")

    @FUZZ
    @given(params=parameter_sets)
    def check(params: dict[str, str]) -> None:
        response = client.post(path, data={**params, "csrf_token": csrf_token}, follow_redirects=False)
        assert_well_formed_refusal(path, response)

    check()


@pytest.mark.parametrize("path", ENDPOINTS)
def test_random_form_bodies_never_cause_a_server_error(client, path):
    @FUZZ
    @given(body=st.one_of(st.binary(max_size=400), encoded.map(lambda s: s.encode())))
    @example(body=b"grant_type=client_credentials&scope=%ff")
    @example(body=b"token=\xff\xfe")
    @example(body=b"a=1&" * 60)
    def check(body: bytes) -> None:
        assert_well_formed_refusal(path, client.post(path, content=body, headers=FORM, follow_redirects=False))

    check()


@pytest.mark.parametrize("path", ["/authorize", "/authorize/resume", "/login", "/consent", "/userinfo"])
def test_random_query_strings_never_cause_a_server_error(client, path):
    @FUZZ
    @given(query=encoded)
    @example(query="client_id=shop&client_id=shop")
    @example(query="tx=%ff%fe")
    def check(query: str) -> None:
        assert_well_formed_refusal(path, client.get(f"{path}?{query}", follow_redirects=False))

    check()


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("application/json", id="json"),
        pytest.param("multipart/form-data; boundary=x", id="multipart"),
        pytest.param("text/plain", id="text"),
        pytest.param("application/x-www-form-urlencoded; charset=utf-16", id="form with a foreign charset"),
    ],
)
@pytest.mark.parametrize("path", ENDPOINTS)
def test_random_bodies_of_other_content_types_never_cause_a_server_error(client, path, content_type):
    @FUZZ
    @given(body=st.one_of(st.binary(max_size=200), st.builds(lambda d: json.dumps(d).encode(), parameter_sets)))
    def check(body: bytes) -> None:
        response = client.post(path, content=body, headers={"content-type": content_type}, follow_redirects=False)
        assert_well_formed_refusal(path, response)

    check()


HEADER_CHARS = st.sampled_from([chr(c) for c in range(0x20, 0x7F)] + ["\t"])


def _basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


@pytest.mark.parametrize("path", ["/token", "/revoke", "/introspect"])
def test_random_authorization_headers_never_cause_a_server_error(client, path):
    @FUZZ
    @given(
        header=st.one_of(
            st.binary(max_size=80).map(_basic),
            st.builds(
                lambda scheme, raw: scheme + base64.b64encode(raw).decode() + " x",
                st.sampled_from(["Basic ", "basic ", "Basic\t", "Basic  "]),
                st.binary(max_size=60),
            ),
            st.text(HEADER_CHARS, max_size=80).map(lambda s: "Basic " + s),
            st.text(HEADER_CHARS, max_size=80),
        )
    )
    @example(header=_basic(b"\xff\xfe:\xff"))
    @example(header="Basic\t/w== x")
    @example(header=" ")
    def check(header: str) -> None:
        response = client.post(
            path,
            data={"grant_type": "client_credentials", "token": "x" * 32},
            headers={"authorization": header},
            follow_redirects=False,
        )
        assert_well_formed_refusal(path, response)

    check()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_random_client_assertion_headers_never_cause_a_server_error(client):
    now = int(time.time())
    claims = _b64url(
        json.dumps(
            {
                "iss": "backend",
                "sub": "backend",
                "aud": "http://localhost:8000",
                "exp": now + 600,
                "jti": "fuzz-jti-0001",
            }
        ).encode()
    )
    scalars = st.one_of(any_text, st.integers(), st.booleans(), st.none())
    header_values = st.one_of(
        scalars,
        st.lists(st.one_of(scalars, st.lists(any_text, max_size=1)), max_size=3),
        st.dictionaries(any_text, scalars, max_size=2),
    )

    @FUZZ
    @given(
        header=st.dictionaries(
            st.sampled_from(["alg", "kid", "crit", "typ", "cty", "jku", "x5u", "zip", "b64"]), header_values, max_size=5
        )
    )
    @example(header={"alg": "RS256", "kid": 'k"1'})
    @example(header={"alg": "RS256", "crit": 0})
    def check(header: dict[str, object]) -> None:
        assertion = f"{_b64url(json.dumps(header).encode())}.{claims}.c2ln"
        response = client.post(
            "/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion": assertion,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            },
        )
        assert_well_formed_refusal("/token", response)

    check()
