"""Malformed, oversized and hostile input at every endpoint (RFC 6749 §3.1, §4.1.2.1, §5.2;
RFC 6750 §3.1; RFC 7009 §2.2.1; RFC 7662 §2.3; OIDC Core §3.1.2.6): the right OAuth error
or a 4xx page, never a 500, and a refused request writes nothing."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from httpx import Response
from joserfc import jwt
from sqlalchemy import func, select
from starlette.testclient import TestClient

from idp.db.models import (
    AccessToken,
    AuditEvent,
    AuthorizationCode,
    Consent,
    IdpSession,
    RefreshToken,
)
from tests.support.rp import (
    SHOP,
    SHOP_REDIRECT,
    AuthRequest,
    form_value,
    query_of,
    redeem,
    refresh,
    sign_in_and_get_code,
    start,
    submit_login,
    tokens_for,
)
from tests.support.seed import PASSWORD, RP_KEY, SHOP_SECRET

ISSUER = "http://localhost:8000"
FORM = "application/x-www-form-urlencoded"
PORTAL = ("portal", SHOP_SECRET + "-portal")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
HUNDRED_PARAMS = "&".join(f"x{i}=1" for i in range(100))
ONE_MB = b"grant_type=client_credentials&padding=" + b"a" * (1 << 20)

Send = Callable[[TestClient], Response]


# -- what a refusal must look like ---------------------------------------------------------


def assert_error_page(response: Response, status: int) -> None:
    """A hosted HTML page: no redirect, not cached, not frameable."""
    assert response.status_code == status, response.text[:400]
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def assert_oauth_error(response: Response, status: int | tuple[int, ...], error: str | None) -> None:
    """A JSON error body (RFC 6749 §5.2), not cached; a 401 names its scheme (RFC 9110 §15.5.2)."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, response.text[:400]
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    if error is None:
        assert isinstance(body.get("error"), str) and body["error"]
    else:
        assert body.get("error") == error, body
    if response.status_code == 401:
        assert response.headers.get("www-authenticate"), "a 401 must carry WWW-Authenticate"


def assert_error_redirect(response: Response, request: AuthRequest, error: str) -> None:
    """Back to the registered redirect_uri with error, the state sent and iss (RFC 9207)."""
    assert response.status_code == 303, response.text[:400]
    location = response.headers["location"]
    assert location.startswith(request.redirect_uri + "?"), location
    params = query_of(location)
    assert params.get("error") == error, params
    assert params.get("state") == request.state and params.get("iss") == ISSUER, params
    assert "code" not in params
    assert response.headers["cache-control"] == "no-store"


def bug(reason: str) -> pytest.MarkDecorator:
    """A case that found a bug (then a strict xfail); it now pins the fix."""
    return pytest.mark.regression(reason)


# -- /authorize ----------------------------------------------------------------------------


def changed(**changes: str | None) -> Callable[[dict[str, str]], str]:
    """The valid authorization request with some parameters changed (None drops one)."""

    def query(params: dict[str, str]) -> str:
        merged = {**params, **changes}
        return urlencode({k: v for k, v in merged.items() if v is not None})

    return query


def appended(raw: str) -> Callable[[dict[str, str]], str]:
    """The valid authorization request with raw, already encoded text added to its query."""
    return lambda params: urlencode(params) + raw


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(changed(client_id="ghost"), id="unknown client_id"),
        pytest.param(changed(client_id=None), id="missing client_id"),
        pytest.param(changed(client_id="s" * 300), id="overlong client_id"),
        pytest.param(changed(redirect_uri="https://evil.example/callback"), id="unregistered redirect_uri"),
        pytest.param(changed(redirect_uri=SHOP_REDIRECT + "/"), id="redirect_uri with a trailing slash"),
        pytest.param(changed(redirect_uri="https://shop.example/CALLBACK"), id="redirect_uri in a different case"),
        pytest.param(changed(redirect_uri="https://SHOP.EXAMPLE/callback"), id="redirect_uri host in a different case"),
        pytest.param(
            changed(redirect_uri=SHOP_REDIRECT + "?next=https://evil.example"), id="redirect_uri with an extra query"
        ),
        pytest.param(changed(redirect_uri=SHOP_REDIRECT + "#x"), id="redirect_uri with a fragment"),
        pytest.param(changed(redirect_uri="http://shop.example/callback"), id="redirect_uri downgraded to http"),
        pytest.param(changed(redirect_uri="http://localhost:5173/callback"), id="redirect_uri of another client"),
        pytest.param(changed(redirect_uri=None), id="missing redirect_uri"),
        pytest.param(
            changed(response_type="token", redirect_uri="https://evil.example/cb"),
            id="unsupported response_type with an unregistered redirect_uri",
        ),
        pytest.param(
            changed(redirect_uri=SHOP_REDIRECT + "\u00e9"),
            id="redirect_uri with a non-ASCII character",
            marks=bug(
                "Authlib builds 'Redirect URI ... is not supported by client.' with the raw value; OAuth2Error "
                "refuses non-ASCII, '\"' or '\\' in a description with ValueError -> 500"
            ),
        ),
        pytest.param(appended("&client_id=shop"), id="duplicated client_id"),
        pytest.param(appended("&redirect_uri=" + quote(SHOP_REDIRECT, safe="")), id="duplicated redirect_uri"),
        pytest.param(changed(state="s" * 5000), id="5000-character state"),
        pytest.param(appended("&login_hint=a%00b"), id="NUL byte in a value"),
        pytest.param(appended("&login_hint=%ff"), id="non-UTF-8 percent-encoding"),
        pytest.param(appended("&" + HUNDRED_PARAMS), id="100 parameters"),
        pytest.param(appended("&" + "k" * 200 + "=v"), id="overlong parameter name"),
    ],
)
def test_authorization_request_without_a_trusted_redirect_shows_a_page_and_never_redirects(client, build):
    response = client.get("/authorize?" + build(AuthRequest().params()), follow_redirects=False)
    assert_error_page(response, 400)


@pytest.mark.parametrize(
    "changes, error",
    [
        pytest.param({"response_type": "token"}, "unsupported_response_type", id="response_type=token"),
        pytest.param({"response_type": "id_token"}, "unsupported_response_type", id="response_type=id_token"),
        pytest.param({"response_type": "code id_token"}, "unsupported_response_type", id="response_type=code id_token"),
        pytest.param({"response_type": "foo"}, "unsupported_response_type", id="response_type=foo"),
        pytest.param(
            {"response_type": None},
            "invalid_request",
            id="missing response_type",
            marks=bug(
                "a missing response_type answers unsupported_response_type; RFC 6749 §4.1.2.1 says "
                "invalid_request for a missing required parameter"
            ),
        ),
        pytest.param(
            {"response_type": 'code"'},
            "unsupported_response_type",
            id="response_type with a quote",
            marks=bug(
                "Authlib puts the raw response_type in the error description; OAuth2Error raises ValueError "
                "for '\"', '\\', control or non-ASCII characters -> 500"
            ),
        ),
        pytest.param({"scope": "profile email"}, "invalid_scope", id="no openid in the scope"),
        pytest.param({"scope": "admin groups"}, "invalid_scope", id="only unknown scope values"),
        pytest.param({"scope": "   "}, "invalid_scope", id="whitespace-only scope"),
        pytest.param({"code_challenge": None}, "invalid_request", id="missing code_challenge"),
        pytest.param({"code_challenge_method": "plain"}, "invalid_request", id="code_challenge_method=plain"),
        pytest.param({"code_challenge_method": "S512"}, "invalid_request", id="unknown code_challenge_method"),
        pytest.param({"code_challenge": "abc"}, "invalid_request", id="code_challenge too short"),
        pytest.param({"request": "eyJhbGciOiJub25lIn0.e30."}, "request_not_supported", id="request object"),
        pytest.param(
            {"request_uri": "https://shop.example/request.jwt"}, "request_uri_not_supported", id="request_uri"
        ),
        pytest.param({"prompt": "none login"}, "invalid_request", id="prompt=none together with login"),
        pytest.param({"prompt": "bogus"}, "invalid_request", id="unknown prompt value"),
        pytest.param({"max_age": "-1"}, "invalid_request", id="max_age=-1"),
        pytest.param({"max_age": "abc"}, "invalid_request", id="max_age=abc"),
        pytest.param({"max_age": "9" * 12}, "invalid_request", id="max_age with 12 digits"),
        pytest.param({"response_mode": "fragment"}, "invalid_request", id="response_mode=fragment"),
        pytest.param({"response_mode": "fragment"}, "invalid_request", id="response_mode=fragment"),
        pytest.param({"state": "s" * 3000}, "invalid_request", id="3000-character state"),
        pytest.param({"nonce": "n" * 600}, "invalid_request", id="600-character nonce"),
    ],
)
def test_authorization_request_errors_redirect_with_error_state_and_iss(client, changes, error):
    request = AuthRequest(extra={k: v for k, v in changes.items() if k != "state"})
    request.state = changes.get("state", request.state)
    assert_error_redirect(start(client, request), request, error)


def test_an_error_redirect_without_state_carries_no_state_but_the_issuer(client):
    response = start(client, AuthRequest(state=None, extra={"response_type": "token"}))  # type: ignore[arg-type]
    params = query_of(response.headers["location"])
    assert params["error"] == "unsupported_response_type" and params["iss"] == ISSUER and "state" not in params


@pytest.mark.parametrize(
    "content, content_type",
    [
        pytest.param(b'{"client_id": "shop"}', "application/json", id="JSON body"),
        pytest.param(b"client_id=shop", "text/plain", id="text body"),
        pytest.param(b"client_id=shop&state=\xff", FORM, id="non-UTF-8 form body"),
        pytest.param(b"client_id=shop&x=" + b"a" * (1 << 20), FORM, id="1 MB form body"),
    ],
)
def test_authorization_post_with_a_malformed_body_shows_a_page(client, content, content_type):
    response = client.post(
        "/authorize", content=content, headers={"content-type": content_type}, follow_redirects=False
    )
    assert_error_page(response, 400)


# -- /token --------------------------------------------------------------------------------


def post(path: str, data: dict[str, str] | None = None, *, auth: tuple[str, str] | None = SHOP, **kw: Any) -> Send:
    return lambda client: client.post(path, data=data, auth=auth, follow_redirects=False, **kw)


def raw(
    path: str,
    body: bytes,
    content_type: str | None = FORM,
    *,
    auth: tuple[str, str] | None = SHOP,
    headers: dict[str, str] | None = None,
) -> Send:
    all_headers = {**({"content-type": content_type} if content_type else {}), **(headers or {})}
    return lambda client: client.post(path, content=body, headers=all_headers, auth=auth, follow_redirects=False)


def with_authorization(path: str, header: str, data: dict[str, str]) -> Send:
    return lambda client: client.post(path, data=data, headers={"authorization": header}, follow_redirects=False)


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assertion_claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())  # joserfc checks an assertion against the wall clock, not the app's
    claims = {
        "iss": "backend",
        "sub": "backend",
        "aud": ISSUER,
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    return {**claims, **changes}


def signed_assertion(**changes: Any) -> str:
    return jwt.encode({"alg": "RS256", "kid": RP_KEY.kid}, assertion_claims(**changes), RP_KEY)


def unsigned_assertion(header: dict[str, Any]) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(assertion_claims()).encode())}.c2ln"


def client_assertion(assertion: Callable[[], str], **extra: str) -> Send:
    def send(client: TestClient) -> Response:
        data = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion(),
            **extra,
        }
        return client.post("/token", data=data, follow_redirects=False)

    return send


def with_code(auth: tuple[str, str] | None = SHOP, **changes: str) -> Send:
    """Redeems a freshly issued code with some parameters changed."""

    def send(client: TestClient) -> Response:
        request, code = sign_in_and_get_code(client)
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": request.redirect_uri,
            "code_verifier": request.verifier,
            **changes,
        }
        return client.post("/token", data=data, auth=auth)

    return send


def with_refresh_token(auth: tuple[str, str] | None = SHOP, **extra: str) -> Send:
    def send(client: TestClient) -> Response:
        data = {"grant_type": "refresh_token", "refresh_token": tokens_for(client)["refresh_token"], **extra}
        return client.post("/token", data=data, auth=auth)

    return send


CC = {"grant_type": "client_credentials"}

TOKEN_REFUSALS = [
    pytest.param(
        post("/token", {"scope": "profile"}),
        400,
        "invalid_request",
        id="refuses a request without grant_type",
        marks=bug("a missing grant_type answers unsupported_grant_type; RFC 6749 §5.2 says invalid_request"),
    ),
    pytest.param(
        post("/token", {"grant_type": "password", "username": "alice", "password": PASSWORD}),
        400,
        "unsupported_grant_type",
        id="refuses grant_type=password",
    ),
    pytest.param(
        post("/token", {"grant_type": "implicit"}), 400, "unsupported_grant_type", id="refuses grant_type=implicit"
    ),
    pytest.param(post("/token", {"grant_type": "foo"}), 400, "unsupported_grant_type", id="refuses grant_type=foo"),
    pytest.param(post("/token", CC, auth=("shop", "wrong")), 401, "invalid_client", id="refuses a wrong client secret"),
    pytest.param(post("/token", CC, auth=("ghost", "x")), 401, "invalid_client", id="refuses an unknown client"),
    pytest.param(
        post("/token", CC, auth=None), 401, "invalid_client", id="refuses a request without client authentication"
    ),
    pytest.param(
        post("/token", {**CC, "client_id": "spa"}, auth=None),
        401,
        "invalid_client",
        id="refuses client_credentials for a public client",
    ),
    pytest.param(
        post("/token", {**CC, "client_id": PORTAL[0], "client_secret": PORTAL[1]}, auth=None),
        400,
        "unauthorized_client",
        id="refuses client_credentials for a client not registered for it",
    ),
    pytest.param(
        post("/token", CC, auth=PORTAL),
        401,
        "invalid_client",
        id="refuses client_secret_basic from a client_secret_post client",
    ),
    pytest.param(
        post("/token", {**CC, "client_id": "shop", "client_secret": SHOP_SECRET}, auth=None),
        401,
        "invalid_client",
        id="refuses client_secret_post from a client_secret_basic client",
    ),
    pytest.param(
        post("/token", {**CC, "scope": "openid"}),
        400,
        "invalid_scope",
        id="refuses client_credentials with scope=openid",
    ),
    pytest.param(
        post("/token", {**CC, "scope": "offline_access"}),
        400,
        "invalid_scope",
        id="refuses client_credentials with scope=offline_access",
    ),
    pytest.param(post("/token", {**CC, "scope": "admin"}), 400, "invalid_scope", id="refuses an unknown scope"),
    pytest.param(
        post(
            "/token",
            {
                "grant_type": "authorization_code",
                "code": "garbage",
                "redirect_uri": SHOP_REDIRECT,
                "code_verifier": "v" * 43,
            },
        ),
        400,
        "invalid_grant",
        id="refuses code=garbage",
    ),
    pytest.param(
        post("/token", {"grant_type": "authorization_code", "redirect_uri": SHOP_REDIRECT, "code_verifier": "v" * 43}),
        400,
        "invalid_request",
        id="refuses a missing code",
    ),
    pytest.param(
        with_code(redirect_uri="https://shop.example/other"),
        400,
        "invalid_grant",
        id="refuses a code with another redirect_uri",
    ),
    pytest.param(with_code(code_verifier="short"), 400, "invalid_request", id="refuses a malformed code_verifier"),
    pytest.param(
        with_code(auth=None, client_id="spa"), 400, "invalid_grant", id="refuses a code redeemed by another client"
    ),
    pytest.param(
        post("/token", {"grant_type": "refresh_token", "refresh_token": "garbage"}),
        400,
        "invalid_grant",
        id="refuses refresh_token=garbage",
    ),
    pytest.param(
        post("/token", {"grant_type": "refresh_token"}), 400, "invalid_request", id="refuses a missing refresh_token"
    ),
    pytest.param(
        with_refresh_token(scope="openid admin"), 400, "invalid_scope", id="refuses a refresh that widens the scope"
    ),
    pytest.param(
        with_refresh_token(scope="   "),
        400,
        "invalid_scope",
        id="refuses a refresh with a whitespace-only scope",
        marks=bug(
            "scope='   ' on a refresh passes Authlib's subset check and issues tokens with scope '   ' "
            "(and rotates the old refresh token); /authorize refuses the same value with invalid_scope"
        ),
    ),
    pytest.param(
        raw("/token", b'{"grant_type": "client_credentials"}', "application/json"),
        400,
        "invalid_request",
        id="refuses a JSON body",
    ),
    pytest.param(
        post("/token", CC, files={"f": ("f.txt", b"x")}), 400, "invalid_request", id="refuses a multipart body"
    ),
    pytest.param(
        raw("/token", b"grant_type=client_credentials", None),
        400,
        "invalid_request",
        id="refuses a body without content type",
    ),
    pytest.param(raw("/token", ONE_MB), 400, "invalid_request", id="refuses a 1 MB body"),
    pytest.param(
        raw("/token", b"grant_type=client_credentials", headers={"content-length": "abc"}),
        400,
        "invalid_request",
        id="refuses a non-numeric Content-Length",
    ),
    pytest.param(
        raw("/token", b"grant_type=client_credentials&scope=\xff"),
        400,
        "invalid_request",
        id="refuses a non-UTF-8 body",
    ),
    pytest.param(
        raw("/token", b"grant_type=client_credentials&scope=%ff"),
        400,
        "invalid_request",
        id="refuses non-UTF-8 percent-encoding",
    ),
    pytest.param(
        raw("/token", b"grant_type=client_credentials&grant_type=client_credentials"),
        400,
        "invalid_request",
        id="refuses a duplicated parameter",
    ),
    pytest.param(raw("/token", b"grant_type=client_credentials%00"), 400, "invalid_request", id="refuses a NUL byte"),
    pytest.param(
        raw("/token", b"grant_type=client_credentials&" + HUNDRED_PARAMS.encode()),
        400,
        "invalid_request",
        id="refuses 100 parameters",
    ),
    pytest.param(
        with_authorization("/token", "Basic !!!not-base64!!!", CC),
        401,
        "invalid_client",
        id="refuses a Basic header that is not base64",
    ),
    pytest.param(
        with_authorization("/token", basic(b"shop"), CC),
        401,
        "invalid_client",
        id="refuses Basic credentials without a colon",
    ),
    pytest.param(
        with_authorization("/token", basic(b"shop:\xff"), CC),
        401,
        "invalid_client",
        id="refuses Basic credentials that are not UTF-8",
        marks=bug("Authlib's extract_basic_authorization decodes without catching UnicodeDecodeError -> 500"),
    ),
    pytest.param(
        with_authorization("/token", "Basic ", CC),
        401,
        "invalid_client",
        id="refuses an empty Basic header",
        marks=bug("'Basic ' makes Authlib's extract_basic_authorization unpack one value into two (ValueError) -> 500"),
    ),
    pytest.param(
        with_authorization("/token", " ", CC),
        401,
        "invalid_client",
        id="refuses a blank Authorization header",
        marks=bug("Authlib's extract_basic_authorization splits ' ' into nothing (ValueError) -> 500"),
    ),
    pytest.param(
        with_authorization("/token", "Basic\t/w== x", CC),
        401,
        "invalid_client",
        id="refuses tab-separated Basic credentials that are not UTF-8",
        marks=bug("Authlib splits on any whitespace and decodes without catching UnicodeDecodeError -> 500"),
    ),
    pytest.param(
        client_assertion(lambda: unsigned_assertion({"alg": "none"})),
        (400, 401),
        "invalid_client",
        id="refuses a client assertion with alg=none",
    ),
    pytest.param(
        client_assertion(lambda: "a.b.c"), (400, 401), "invalid_client", id="refuses a malformed client assertion"
    ),
    pytest.param(
        client_assertion(lambda: unsigned_assertion({"alg": "RS256", "kid": 'k"1'})),
        (400, 401),
        "invalid_client",
        id="refuses a client assertion whose kid has a quote",
        marks=bug(
            "Authlib copies joserfc's message (\"No key for kid: 'k\"1'\") into InvalidClientError; "
            "OAuth2Error raises ValueError for the quote -> 500, before any signature check"
        ),
    ),
    pytest.param(
        client_assertion(lambda: unsigned_assertion({"alg": "RS\u00e9"})),
        (400, 401),
        "invalid_client",
        id="refuses a client assertion with a non-ASCII alg",
        marks=bug("joserfc's 'Algorithm of ... is not supported' quotes the header -> ValueError -> 500"),
    ),
    pytest.param(
        client_assertion(lambda: unsigned_assertion({"alg": "RS256", "crit": 0})),
        (400, 401),
        "invalid_client",
        id="refuses a client assertion whose crit is not a list",
        marks=bug("joserfc raises TypeError (not a JoseError) on a malformed crit; Authlib lets it through -> 500"),
    ),
    pytest.param(
        client_assertion(signed_assertion, client_id="shop"),
        (400, 401),
        "invalid_client",
        id="refuses a client assertion for one client with client_id of another",
        marks=bug(
            "client_id=shop is ignored when the assertion authenticates backend; RFC 7521 §4.2: "
            "client_id MUST identify the same client as the assertion"
        ),
    ),
]


@pytest.mark.parametrize("send, status, error", TOKEN_REFUSALS)
def test_token_endpoint_refuses_bad_requests_with_the_right_error(client, send, status, error):
    assert_oauth_error(send(client), status, error)


@bug(
    "IdpAuthorizationServer.authenticate_client keeps any description containing 'assertion', and Authlib's "
    "'cannot authenticate with methods: [..., 'client_assertion_jwt']' always does: the method list still leaks"
)
def test_a_failed_client_authentication_names_no_internal_method(client):
    response = client.post("/token", data=CC, auth=("shop", "wrong"))
    assert response.status_code == 401 and "client_assertion_jwt" not in response.json().get("error_description", "")


# -- /revoke and /introspect ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/revoke", "/introspect"])
@pytest.mark.parametrize(
    "make, status, error",
    [
        pytest.param(lambda p: post(p, {"token_type_hint": "access_token"}), 400, "invalid_request", id="no token"),
        pytest.param(lambda p: post(p, {"token": "t" * 43}, auth=None), 401, "invalid_client", id="unauthenticated"),
        pytest.param(
            lambda p: post(p, {"token": "t" * 43}, auth=("shop", "wrong")),
            401,
            "invalid_client",
            id="wrong client secret",
        ),
        pytest.param(
            lambda p: post(p, {"token": "t" * 43}, auth=("ghost", "x")), 401, "invalid_client", id="unknown client"
        ),
        pytest.param(lambda p: raw(p, b'{"token": "x"}', "application/json"), 400, "invalid_request", id="JSON body"),
        pytest.param(lambda p: raw(p, b"token=a&token=b"), 400, "invalid_request", id="duplicated token"),
        pytest.param(lambda p: raw(p, b"token=" + b"a" * (1 << 20)), 400, "invalid_request", id="1 MB body"),
        pytest.param(lambda p: raw(p, b"token=\xff"), 400, "invalid_request", id="non-UTF-8 body"),
        pytest.param(
            lambda p: with_authorization(p, basic(b"\xff:\xff"), {"token": "t" * 43}),
            401,
            "invalid_client",
            id="Basic credentials that are not UTF-8",
            marks=bug("Authlib's extract_basic_authorization raises UnicodeDecodeError -> 500"),
        ),
        pytest.param(
            lambda p: post(p, {"token": "t" * 43, "token_type_hint": "bogus"}),
            400,
            "unsupported_token_type",
            id="token_type_hint=bogus",
            marks=bug(
                "unsupported_token_type is sent with status 401 (Authlib's ForbiddenError) and no "
                "WWW-Authenticate; RFC 7009 §2.2.1 / RFC 6749 §5.2 say 400"
            ),
        ),
    ],
)
def test_revocation_and_introspection_refuse_bad_requests(client, path, make, status, error):
    assert_oauth_error(make(path)(client), status, error)


@pytest.mark.parametrize("path", ["/revoke", "/introspect"])
def test_an_unknown_token_type_hint_is_refused_with_unsupported_token_type(client, path):
    response = client.post(path, data={"token": "t" * 43, "token_type_hint": "bogus"}, auth=SHOP)
    assert 400 <= response.status_code < 500 and response.json()["error"] == "unsupported_token_type"


def test_introspection_by_a_public_client_is_refused(client):
    request, code = sign_in_and_get_code(
        client, AuthRequest(client_id="spa", redirect_uri="http://localhost:5173/callback", scope="openid")
    )
    access_token = redeem(client, request, code, auth=None).json()["access_token"]
    response = client.post("/introspect", data={"token": access_token, "client_id": "spa"})
    assert_oauth_error(response, 401, "invalid_client")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("unknown-token-value-0123456789", id="unknown token"),
        pytest.param("x", id="one-character token"),
        pytest.param("\u00e9" * 300, id="300 non-ASCII characters"),
    ],
)
def test_an_unknown_token_is_revoked_silently_and_introspected_as_inactive(client, token):
    revoked = client.post("/revoke", data={"token": token}, auth=SHOP)
    assert revoked.status_code == 200 and revoked.headers["cache-control"] == "no-store"  # RFC 7009 §2.2
    introspected = client.post("/introspect", data={"token": token}, auth=SHOP)
    assert introspected.status_code == 200 and introspected.json() == {"active": False}  # RFC 7662 §2.2


# -- /userinfo -----------------------------------------------------------------------------


def userinfo(method: str, **kw: Any) -> Send:
    return lambda client: client.request(method, "/userinfo", **kw)


def with_access_token(where: str) -> Send:
    def send(client: TestClient) -> Response:
        token = tokens_for(client)["access_token"]
        if where == "query":
            return client.get(f"/userinfo?access_token={token}")
        return client.post("/userinfo", data={"access_token": token}, headers={"authorization": f"Bearer {token}"})

    return send


def with_client_credentials_token(client: TestClient) -> Response:
    token = client.post("/token", data={**CC, "scope": "profile"}, auth=SHOP).json()["access_token"]
    return client.get("/userinfo", headers={"authorization": f"Bearer {token}"})


@pytest.mark.parametrize(
    "send, status, error",
    [
        pytest.param(userinfo("GET"), 401, None, id="no token"),
        pytest.param(userinfo("GET", headers={"authorization": "Bearer "}), 401, None, id="Bearer with an empty token"),
        pytest.param(
            userinfo("GET", headers={"authorization": "Basic " + "a" * 40}), 401, None, id="Basic instead of Bearer"
        ),
        pytest.param(with_access_token("query"), 401, None, id="token in the query string only"),
        pytest.param(
            userinfo("GET", headers={"authorization": "Bearer " + "n" * 43}), 401, "invalid_token", id="unknown token"
        ),
        pytest.param(
            userinfo("GET", headers={"authorization": "Bearer " + "n" * 5000}),
            401,
            "invalid_token",
            id="5000-character token",
        ),
        pytest.param(with_client_credentials_token, 401, "invalid_token", id="client_credentials token without a user"),
        pytest.param(with_access_token("header and body"), 400, "invalid_request", id="token in both header and body"),
        pytest.param(
            userinfo("POST", content=b"access_token=a&access_token=b", headers={"content-type": FORM}),
            400,
            "invalid_request",
            id="duplicated access_token in the body",
        ),
        pytest.param(
            userinfo("POST", content=b"access_token=\xff", headers={"content-type": FORM}),
            400,
            "invalid_request",
            id="non-UTF-8 body",
        ),
        pytest.param(
            userinfo("POST", content=b"access_token=" + b"a" * (1 << 20), headers={"content-type": FORM}),
            400,
            "invalid_request",
            id="1 MB body",
        ),
    ],
)
def test_userinfo_refuses_missing_and_malformed_tokens(client, send, status, error):
    response = send(client)
    assert_oauth_error(response, status, error)
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


@bug(
    "a request without any token gets 'Bearer error=\"invalid_request\"' with 401; RFC 6750 §3.1: no error code when "
    "the request has no authentication, and invalid_request goes with 400"
)
def test_userinfo_without_a_token_sends_a_bare_bearer_challenge(client):
    response = client.get("/userinfo")
    assert response.status_code == 401 and "error=" not in response.headers["www-authenticate"]


# -- hosted pages: /login, /consent, /authorize/resume ---------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("/login?tx=garbage", id="login with an unknown tx"),
        pytest.param("/login?tx=" + "g" * 200, id="login with an overlong tx"),
        pytest.param("/login?tx=https://evil.example", id="login with a URL for tx"),
        pytest.param("/authorize/resume?tx=garbage", id="resume with an unknown tx"),
        pytest.param("/authorize/resume", id="resume without tx"),
        pytest.param("/authorize/resume?tx=%ff%fe", id="resume with a non-UTF-8 tx"),
        pytest.param("/consent?tx=garbage", id="consent with an unknown tx"),
        pytest.param("/consent", id="consent without tx"),
    ],
)
def test_pages_for_an_unknown_transaction_answer_400(client, url):
    assert_error_page(client.get(url, follow_redirects=False), 400)


def last_audit_id(client: TestClient) -> int:
    with client.app.state.services.sessions() as db:
        return int(db.scalar(select(func.max(AuditEvent.id))) or 0)


def count_rows(client: TestClient) -> dict[str, int]:
    models = (AccessToken, RefreshToken, AuthorizationCode, IdpSession, Consent, AuditEvent)
    with client.app.state.services.sessions() as db:
        return {m.__tablename__: db.scalar(select(func.count()).select_from(m)) for m in models}


def pending_login(client: TestClient) -> tuple[str, str]:
    """A parked authorization request at the login page: (tx, csrf_token)."""
    page = client.get(start(client, AuthRequest(extra={"prompt": "login"})).headers["location"])
    return form_value(page.text, "tx"), form_value(page.text, "csrf_token")


LOGIN = {"username": "alice", "password": PASSWORD}


@pytest.mark.parametrize(
    "make, status",
    [
        pytest.param(lambda tx, csrf: {"data": {**LOGIN, "tx": tx}}, 403, id="missing csrf_token"),
        pytest.param(
            lambda tx, csrf: {"data": {**LOGIN, "tx": tx, "csrf_token": "0" * 64}}, 403, id="forged csrf_token"
        ),
        pytest.param(
            lambda tx, csrf: {"data": {**LOGIN, "tx": tx, "csrf_token": csrf[:-1]}}, 403, id="truncated csrf_token"
        ),
        pytest.param(
            lambda tx, csrf: {
                "content": json.dumps({**LOGIN, "tx": tx, "csrf_token": csrf}).encode(),
                "headers": {"content-type": "application/json"},
            },
            400,
            id="JSON body",
        ),
        pytest.param(
            lambda tx, csrf: {"data": {**LOGIN, "tx": tx, "csrf_token": csrf}, "files": {"f": ("f", b"x")}},
            400,
            id="multipart body",
        ),
        pytest.param(lambda tx, csrf: {"data": {**LOGIN, "tx": "g" * 32, "csrf_token": csrf}}, 400, id="unknown tx"),
        pytest.param(
            lambda tx, csrf: {
                "content": urlencode({**LOGIN, "tx": tx, "csrf_token": csrf}).encode() + b"&username=bob",
                "headers": {"content-type": FORM},
            },
            400,
            id="duplicated username",
        ),
        pytest.param(
            lambda tx, csrf: {
                "content": urlencode({**LOGIN, "tx": tx, "csrf_token": csrf}).encode() + b"&x=\xff",
                "headers": {"content-type": FORM},
            },
            400,
            id="non-UTF-8 body",
        ),
        pytest.param(
            lambda tx, csrf: {
                "content": urlencode({**LOGIN, "tx": tx, "csrf_token": csrf}).encode() + b"&x=" + b"a" * (1 << 20),
                "headers": {"content-type": FORM},
            },
            400,
            id="1 MB body",
        ),
        pytest.param(
            lambda tx, csrf: {"data": {"username": "alice", "tx": tx, "csrf_token": csrf}}, 400, id="missing password"
        ),
    ],
)
def test_refused_login_posts_show_a_page_and_write_nothing(client, make, status):
    tx, csrf = pending_login(client)
    before = count_rows(client)
    response = client.post("/login", follow_redirects=False, **make(tx, csrf))
    assert_error_page(response, status)
    assert "idp_session" not in response.headers.get("set-cookie", "")
    assert count_rows(client) == before
    # the parked request is intact: the real login still goes through
    assert submit_login(client, f"/login?tx={tx}").headers["location"] == f"/authorize/resume?tx={tx}"


def test_a_wrong_password_writes_only_its_audit_event(client):
    tx, _ = pending_login(client)
    before = count_rows(client)
    response = submit_login(client, f"/login?tx={tx}", password=PASSWORD + "x")
    assert response.status_code == 401 and "idp_session" not in response.headers.get("set-cookie", "")
    assert count_rows(client) == {**before, "audit_events": before["audit_events"] + 1}


def pending_consent(client: TestClient) -> tuple[str, str]:
    """A signed-in browser at the consent page: (tx, csrf_token)."""
    tx, _ = pending_login(client)
    resumed = client.get(submit_login(client, f"/login?tx={tx}").headers["location"], follow_redirects=False)
    page = client.get(resumed.headers["location"])
    return form_value(page.text, "tx"), form_value(page.text, "csrf_token")


@pytest.mark.parametrize(
    "make, status",
    [
        pytest.param(lambda tx, csrf: {"data": {"tx": tx, "decision": "allow"}}, 403, id="missing csrf_token"),
        pytest.param(
            lambda tx, csrf: {"data": {"tx": tx, "decision": "allow", "csrf_token": "f" * 64}},
            403,
            id="forged csrf_token",
        ),
        pytest.param(
            lambda tx, csrf: {"data": {"tx": tx, "decision": "maybe", "csrf_token": csrf}}, 400, id="decision=maybe"
        ),
        pytest.param(lambda tx, csrf: {"data": {"tx": tx, "csrf_token": csrf}}, 400, id="no decision"),
        pytest.param(
            lambda tx, csrf: {"data": {"tx": "u" * 32, "decision": "allow", "csrf_token": csrf}}, 400, id="unknown tx"
        ),
        pytest.param(lambda tx, csrf: {"data": {"decision": "allow", "csrf_token": csrf}}, 400, id="no tx"),
        pytest.param(
            lambda tx, csrf: {
                "content": json.dumps({"tx": tx, "decision": "allow", "csrf_token": csrf}).encode(),
                "headers": {"content-type": "application/json"},
            },
            400,
            id="JSON body",
        ),
        pytest.param(
            lambda tx, csrf: {
                "content": urlencode({"tx": tx, "decision": "allow", "csrf_token": csrf}).encode() + b"&decision=deny",
                "headers": {"content-type": FORM},
            },
            400,
            id="duplicated decision",
        ),
    ],
)
def test_refused_consent_posts_show_a_page_and_write_nothing(client, make, status):
    tx, csrf = pending_consent(client)
    before = count_rows(client)
    response = client.post("/consent", follow_redirects=False, **make(tx, csrf))
    assert_error_page(response, status)
    assert count_rows(client) == before
    # the parked request is intact: the real decision still goes through
    allowed = client.post("/consent", data={"tx": tx, "decision": "allow", "csrf_token": csrf}, follow_redirects=False)
    assert "code" in query_of(allowed.headers["location"])


# -- no partial write ----------------------------------------------------------------------


def token_state(client: TestClient) -> dict[str, Any]:
    """Row counts and every column a token request may change."""
    with client.app.state.services.sessions() as db:
        return {
            **count_rows(client),
            "codes": sorted((r.id, r.used_at) for r in db.scalars(select(AuthorizationCode))),
            "refresh": sorted(
                (r.id, r.rotated_at, r.revoked_at, r.successor_digest) for r in db.scalars(select(RefreshToken))
            ),
            "access": sorted((r.id, r.revoked_at) for r in db.scalars(select(AccessToken))),
            "sessions": sorted((r.id, r.ended_at) for r in db.scalars(select(IdpSession))),
        }


def test_a_batch_of_refused_requests_writes_nothing(client):
    tokens = tokens_for(client)
    request, code = sign_in_and_get_code(client)  # issued, not yet redeemed
    code_data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": request.redirect_uri,
        "code_verifier": request.verifier,
    }
    refresh_data = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    tx, csrf = pending_login(client)
    before = token_state(client)

    refusals: list[Send] = [
        post("/token", {**code_data, "redirect_uri": "https://shop.example/other"}),
        post("/token", {**code_data, "client_id": "spa"}, auth=None),
        post("/token", {**code_data, "client_id": PORTAL[0], "client_secret": PORTAL[1]}, auth=None),
        post("/token", code_data, auth=("shop", "wrong")),
        post("/token", {**refresh_data, "scope": "openid admin"}),
        post("/token", {**refresh_data, "client_id": PORTAL[0], "client_secret": PORTAL[1]}, auth=None),
        post("/token", {**refresh_data, "client_id": "spa"}, auth=None),
        post("/token", refresh_data, auth=("shop", "wrong")),
        post("/token", {**refresh_data, "refresh_token": tokens["access_token"]}),
        post("/token", {**CC, "scope": "openid"}),
        post("/token", {"grant_type": "password", **LOGIN}),
        raw("/token", json.dumps(refresh_data).encode(), "application/json"),
        raw("/token", urlencode(refresh_data).encode() + b"&grant_type=refresh_token"),
        raw("/token", urlencode(code_data).encode() + b"&x=" + b"a" * (1 << 20)),
        post("/revoke", {"token": tokens["refresh_token"]}, auth=("shop", "wrong")),
        post(
            "/revoke", {"token": tokens["refresh_token"], "client_id": PORTAL[0], "client_secret": PORTAL[1]}, auth=None
        ),
        post("/introspect", {"token": tokens["access_token"], "client_id": "spa"}, auth=None),
        lambda c: c.post(
            "/userinfo",
            data={"access_token": tokens["access_token"]},
            headers={"authorization": f"Bearer {tokens['access_token']}"},
        ),
        post("/login", {**LOGIN, "tx": tx}, auth=None),
        post("/login", {**LOGIN, "tx": "g" * 32, "csrf_token": csrf}, auth=None),
        raw("/login", json.dumps({**LOGIN, "tx": tx, "csrf_token": csrf}).encode(), "application/json", auth=None),
    ]
    audited_before = last_audit_id(client)
    for send in refusals:
        response = send(client)
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])

    after = token_state(client)
    assert {k: v for k, v in after.items() if k != "audit_events"} == {
        k: v for k, v in before.items() if k != "audit_events"
    }
    # the only rows written are the audit trail of failed client authentications (issue 14)
    with client.app.state.services.sessions() as db:
        kinds = set(db.scalars(select(AuditEvent.kind).where(AuditEvent.id > audited_before)))
    assert kinds <= {"client.authentication_failed"}, kinds
    # nothing was consumed: the code, the refresh token and the parked login all still work
    assert redeem(client, request, code).status_code == 200
    assert refresh(client, tokens["refresh_token"]).status_code == 200
    assert submit_login(client, f"/login?tx={tx}").status_code == 303


# -- methods and paths nobody serves -----------------------------------------------------------


@pytest.mark.parametrize(
    "method, url, status",
    [
        pytest.param("GET", "/token", 405, id="GET on the token endpoint"),
        pytest.param("PUT", "/token", 405, id="PUT on the token endpoint"),
        pytest.param("GET", "/revoke", 405, id="GET on the revocation endpoint"),
        pytest.param("GET", "/introspect", 405, id="GET on the introspection endpoint"),
        pytest.param("DELETE", "/authorize", 405, id="DELETE on the authorization endpoint"),
        pytest.param("PATCH", "/userinfo", 405, id="PATCH on userinfo"),
        pytest.param("POST", "/jwks", 405, id="POST on the JWKS"),
        pytest.param("GET", "/static/../idp/app.py", 404, id="static path traversal"),
        pytest.param("GET", "/static/..%2f..%2fetc%2fpasswd", 404, id="encoded static path traversal"),
    ],
)
def test_wrong_methods_and_paths_are_refused_without_a_server_error(client, method, url, status):
    response = client.request(method, url, follow_redirects=False)
    assert response.status_code == status
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
