"""The authorization endpoint's decision (RFC 6749 §4.1.1, OIDC Core §3.1.2): validate the
request with Authlib, then either redirect to the client (code or error, always with the
RFC 9207 `iss`), show an error page (client or redirect_uri not trusted: never redirect),
or ask the login chain or the consent page for what is missing."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749.errors import (
    AccessDeniedError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
)
from authlib.oidc.core.errors import ConsentRequiredError, LoginRequiredError
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError

from idp.audit.trail import record_audit
from idp.clock import clock_of
from idp.db.models import Consent, SessionClient, User
from idp.login.policy import (
    SUPPORTED_ACR,
    GroupPolicy,
    UserFactors,
    may_use,
    requested_level,
    required_level,
    satisfies,
)
from idp.oidc.grants import ApprovedLogin
from idp.oidc.parked import MAX_PARKED_BYTES, parked_size
from idp.oidc.request import IdpRequest
from idp.oidc.server import IdpAuthorizationServer

_RESPONSE_TYPE = re.compile(r"[A-Za-z0-9_ ]{1,100}")
# Built once (SQLAlchemy reuses their compiled form): these run on every authorization.
_CONSENT = select(Consent).where(Consent.user_id == bindparam("user_id"), Consent.client_id == bindparam("client_id"))
_SESSION_CLIENT = select(SessionClient.id).where(
    SessionClient.session_id == bindparam("session_id"), SessionClient.client_id == bindparam("client_id")
)
KNOWN_PROMPTS = frozenset({"none", "login", "consent", "select_account"})
RESPONSE_MODES = ("query", "form_post")  # discovery's response_modes_supported


@dataclass(frozen=True)
class CurrentSession:
    user: User
    sid: str
    session_id: int
    auth_time: datetime
    acr: str
    amr: tuple[str, ...]


@dataclass(frozen=True)
class RedirectToClient:
    location: str  # the redirect URI with the response in its query
    redirect_uri: str = ""  # as registered (and verified)
    response: tuple[tuple[str, str], ...] = ()  # the response's own fields (code or error, state, iss)
    form_post: bool = False  # OAuth 2.0 Form Post Response Mode: the browser POSTs `response` instead


def _to_client(location: str | None, redirect_uri: str, request: IdpRequest) -> RedirectToClient:
    location = _with_issuer(location, request)
    # Authlib appends the response after the redirect URI's own query: the response is the tail
    own = len(parse_qsl(urlsplit(redirect_uri).query, keep_blank_values=True))
    response = tuple(parse_qsl(urlsplit(location).query, keep_blank_values=True)[own:])
    form_post = request.payload.data.get("response_mode") == "form_post"
    return RedirectToClient(location, redirect_uri, response, form_post)


@dataclass(frozen=True)
class ErrorPage:
    status: int
    message: str


@dataclass(frozen=True)
class NotAllowedHere:
    """The session's user may not use this app (not in its allowed_groups): a page saying
    so, whose only button is `back` (access_denied, with state and iss, to the verified
    redirect_uri)."""

    client_name: str
    back: RedirectToClient


@dataclass(frozen=True)
class NeedLogin:
    client_name: str
    login_hint: str | None
    requested_acr: str = "pwd"  # what the RP asked for (acr_values, else the client's default_acr_values)
    step_up: bool = False  # the session is valid but below what is required: ask only for what is missing
    session_user_id: int | None = None  # for a step-up: whose session, and what it already holds
    session_sid: str | None = None
    session_amr: tuple[str, ...] = ()


@dataclass(frozen=True)
class NeedConsent:
    client_name: str
    scopes: tuple[str, ...]
    session_sid: str  # the session the consent is asked of: the decision counts for it only


Outcome = RedirectToClient | ErrorPage | NeedLogin | NeedConsent | NotAllowedHere


def decide(
    server: IdpAuthorizationServer,
    request: IdpRequest,
    session: CurrentSession | None,
    *,
    authenticated_now: bool = False,
    consent_decision: bool | None = None,
    factors: UserFactors | None = None,
    groups: Sequence[GroupPolicy] = (),
) -> Outcome:
    """`factors` and `groups`: the session user's second factors and groups (None and ()
    without a session)."""
    if not request.payload.redirect_uri:
        return ErrorPage(400, "The request has no redirect_uri.")  # OIDC Core §3.1.2.1: REQUIRED
    if not _printable_ascii(request.payload.redirect_uri):
        return ErrorPage(400, "The redirect_uri is not registered for this client.")
    # measured as received (scope is narrowed below), refused only once the client and its
    # redirect_uri are verified so that the RP hears why; either way nothing is parked
    oversized = parked_size(request.payload.data) > MAX_PARKED_BYTES
    response_type = request.payload.data.get("response_type")
    if response_type is not None and not _RESPONSE_TYPE.fullmatch(response_type):
        request.payload.data["response_type"] = "unsupported"  # Authlib would echo it into an error text
    requested_scope = (request.payload.data.get("scope") or "").split()
    _grant_registered_scopes(server, request)
    try:
        grant = server.get_consent_grant(request=request, end_user=session.user if session else None)
        _check_oidc_parameters(request, grant.redirect_uri)
        if oversized:
            raise InvalidRequestError(
                f"The request's parameters are longer than {MAX_PARKED_BYTES} bytes.", redirect_uri=grant.redirect_uri
            )
        if "openid" not in requested_scope:
            raise _redirectable(
                InvalidScopeError,
                grant.redirect_uri,
                "invalid_scope",
                "This provider serves OpenID Connect: the scope must include 'openid'.",
            )
        prompts = set((request.payload.data.get("prompt") or "").split())
        requested = requested_level(
            request.payload.data.get("acr_values"), request.client.config.get("default_acr_values") or ()
        )
        if requested not in SUPPORTED_ACR:
            raise _redirectable(
                InvalidRequestError,
                grant.redirect_uri,
                "unmet_authentication_requirements",
                f"This provider cannot authenticate at the level '{requested}'.",
            )
        if _login_needed(request, session, prompts, authenticated_now):
            if "none" in prompts:
                raise LoginRequiredError(redirect_uri=grant.redirect_uri)
            return NeedLogin(request.client.client_name, _login_hint(request), requested)
        assert session is not None
        if not may_use(request.client.allowed_groups, (group.name for group in groups)):
            return _not_allowed(request, grant.redirect_uri, session, prompts)
        if not satisfies(session.acr, required_level(requested, factors, groups)):
            if "none" in prompts:  # a step-up needs the user: OIDC Core §3.1.2.6
                raise _redirectable(
                    InvalidRequestError, grant.redirect_uri, "interaction_required", "A stronger sign-in is required."
                )
            return NeedLogin(
                request.client.client_name,
                _login_hint(request),
                requested,
                step_up=True,
                session_user_id=session.user.id,
                session_sid=session.sid,
                session_amr=session.amr,
            )
        if consent_decision is True and not request.client.first_party:
            record_consent(request, session.user)
        if not _has_consent(request, session.user, prompts, consent_decision):
            if consent_decision is False:
                return _issue(server, request, grant, session, approved=False)
            if "none" in prompts:
                raise ConsentRequiredError(redirect_uri=grant.redirect_uri)
            return NeedConsent(request.client.client_name, tuple(request.scope.split()), session.sid)
        return _issue(server, request, grant, session, approved=True)
    except OAuth2Error as error:
        return _error_outcome(request, error)


def _not_allowed(request: IdpRequest, redirect_uri: str, session: CurrentSession, prompts: set[str]) -> Outcome:
    """Checked on every authorization, whatever signed the user in: a new sign-in comes back
    here with its session, as do single sign-on and prompt=none."""
    record_audit(
        request.db,
        "access.refused",
        user_id=session.user.id,
        client_id=request.client.client_id,
        ip=request.client_ip,
        outcome="refused",
        reason="not_in_allowed_groups",
        prompt_none="none" in prompts,
    )
    error = AccessDeniedError("This account may not use this application.", redirect_uri=redirect_uri)
    back = _error_outcome(request, error)
    assert isinstance(back, RedirectToClient)  # the redirect_uri is verified: the error goes back
    return back if "none" in prompts else NotAllowedHere(request.client.client_name, back)


def _grant_registered_scopes(server: IdpAuthorizationServer, request: IdpRequest) -> None:
    """OIDC Core §3.1.2.1: scope values not understood SHOULD be ignored. The request is
    granted what it asks for of the client's registered scopes (the token response names
    them); nothing is left when it asked for none of them, or not for openid, and then the
    usual validation refuses it with invalid_scope."""
    client = server.query_client(request.payload.data.get("client_id", ""))
    requested = (request.payload.data.get("scope") or "").split()
    if client is None or "openid" not in requested:
        return
    granted = [value for value in dict.fromkeys(requested) if value in client.scopes]
    if granted:
        request.payload.data["scope"] = " ".join(granted)


def _check_oidc_parameters(request: IdpRequest, redirect_uri: str) -> None:
    data = request.payload.data
    if "request" in data:
        raise _redirectable(
            InvalidRequestError, redirect_uri, "request_not_supported", "Request objects are not supported."
        )
    if "request_uri" in data:
        raise _redirectable(
            InvalidRequestError, redirect_uri, "request_uri_not_supported", "request_uri is not supported."
        )
    mode = data.get("response_mode", "query")
    if mode not in RESPONSE_MODES:
        data.pop("response_mode", None)  # the error itself goes back the default way
        raise InvalidRequestError("Only response_mode=query or form_post is supported.", redirect_uri=redirect_uri)
    if mode == "form_post" and urlsplit(redirect_uri).scheme.lower() not in ("http", "https"):
        data.pop("response_mode", None)
        raise InvalidRequestError("response_mode=form_post needs an http(s) redirect_uri.", redirect_uri=redirect_uri)
    prompts = (data.get("prompt") or "").split()
    if any(p not in KNOWN_PROMPTS for p in prompts):
        raise InvalidRequestError("Unknown 'prompt' value.", redirect_uri=redirect_uri)
    max_age = data.get("max_age")
    if max_age is not None and not (max_age.isdigit() and len(max_age) <= 9):
        raise InvalidRequestError("'max_age' must be a non-negative integer.", redirect_uri=redirect_uri)
    if len(data.get("nonce") or "") > 512 or len(data.get("state") or "") > 2048:
        raise InvalidRequestError("'nonce' or 'state' is too long.", redirect_uri=redirect_uri)


def _redirectable(cls: type[OAuth2Error], redirect_uri: str, error: str, description: str) -> OAuth2Error:
    exc = cls(description, redirect_uri=redirect_uri)
    exc.error = error
    return exc


def _login_needed(
    request: IdpRequest, session: CurrentSession | None, prompts: set[str], authenticated_now: bool
) -> bool:
    if session is None:
        return True
    if authenticated_now:
        return False  # prompt=login comes back on every pass: the chain just ran for this request
    if "login" in prompts:
        return True
    max_age = request.payload.data.get("max_age")
    if max_age is None:  # OIDC Registration §2: the client's default_max_age stands in
        max_age = request.client.config.get("default_max_age")
    if max_age is None:
        return False
    # max_age=0 is prompt=login (OIDC Core §3.1.2.1), even within the second of the sign-in
    return int(max_age) == 0 or (clock_of(request.db).now() - session.auth_time).total_seconds() > int(max_age)


def _has_consent(request: IdpRequest, user: User, prompts: set[str], decision: bool | None) -> bool:
    if request.client.first_party:
        return True
    if decision is not None:
        return decision
    if "consent" in prompts:
        return False
    row = request.db.scalar(_CONSENT, {"user_id": user.id, "client_id": request.client.client_id})
    return row is not None and set(request.scope.split()) <= set(row.scope.split())


def _issue(
    server: IdpAuthorizationServer, request: IdpRequest, grant: Any, session: CurrentSession, *, approved: bool
) -> Outcome:
    db = request.db
    client_id = request.client.client_id
    if approved:
        request.login = ApprovedLogin(session.user, session.sid, session.auth_time, session.acr, session.amr)
        _remember(request, session)
    response = server.create_authorization_response(request, grant_user=session.user if approved else None, grant=grant)
    kind = "authorize.code_issued" if approved else "authorize.denied"
    record_audit(db, kind, user_id=session.user.id, client_id=client_id, ip=request.client_ip)
    if approved and not request.payload.data.get("code_challenge"):  # require_pkce = false: each one on record
        record_audit(
            db,
            "authorize.without_pkce",
            user_id=session.user.id,
            client_id=client_id,
            ip=request.client_ip,
            outcome="success",
        )
    return _to_client(response.location, grant.redirect_uri, request)


def _remember(request: IdpRequest, session: CurrentSession) -> None:
    db, client_id = request.db, request.client.client_id
    if db.scalar(_SESSION_CLIENT, {"session_id": session.session_id, "client_id": client_id}) is None:
        db.add(SessionClient(session_id=session.session_id, client_id=client_id))


def record_consent(request: IdpRequest, user: User) -> None:
    db, client_id = request.db, request.client.client_id
    row = db.scalar(_CONSENT, {"user_id": user.id, "client_id": client_id})
    scopes = set(request.scope.split())
    if row is None:
        try:
            with db.begin_nested():  # two first consents at once (two tabs): the loser updates instead
                db.add(Consent(user_id=user.id, client_id=client_id, scope=" ".join(sorted(scopes))))
        except IntegrityError:
            row = db.scalar(_CONSENT, {"user_id": user.id, "client_id": client_id})
    if row is not None:
        row.scope = " ".join(sorted(scopes | set(row.scope.split())))
        row.granted_at = clock_of(db).now()
    record_audit(db, "consent.granted", user_id=user.id, client_id=client_id, scope=" ".join(sorted(scopes)))


def _error_outcome(request: IdpRequest, error: OAuth2Error) -> Outcome:
    if not error.redirect_uri:
        # client or redirect_uri not established: never redirect (open redirector)
        return ErrorPage(400, error.description or error.error)
    if error.error == "unsupported_response_type" and not request.payload.data.get("response_type"):
        error.error = "invalid_request"  # RFC 6749 §4.1.2.1: a missing parameter
    if error.state is None and request.payload.state:
        error.state = request.payload.state
    _status, _body, headers = error()
    return _to_client(dict(headers)["Location"], error.redirect_uri, request)


def _with_issuer(location: str | None, request: IdpRequest) -> str:
    assert location is not None
    return add_params_to_uri(location, [("iss", request.ctx.issuer)])  # RFC 9207 §2


def _printable_ascii(value: str) -> bool:
    # what RFC 6749 allows in error texts, which Authlib builds from the redirect_uri
    return all(0x21 <= ord(c) <= 0x7E and c not in '"\\' for c in value)


def _login_hint(request: IdpRequest) -> str | None:
    hint = request.payload.data.get("login_hint")
    return hint[:128] if hint else None
