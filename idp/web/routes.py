"""Every URL idp serves, on one screen."""

from __future__ import annotations

from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from idp.web import (
    account,
    account_passkeys,
    authorize,
    consent,
    forgot,
    health,
    home,
    links,
    login,
    logout,
    metrics_endpoint,
    oauth_endpoints,
)

STATIC_DIR = __import__("pathlib").Path(__file__).resolve().parent.parent / "static"

routes = [
    # the machine endpoints first: Starlette tries routes in order, and these take most of the
    # traffic (no other route's path overlaps theirs, so the order changes nothing else)
    # GET is routed too, so that a wrong method gets a JSON OAuth error rather than a text 405
    # OPTIONS: CORS preflights from browser apps (idp/web/cors.py)
    Route("/token", oauth_endpoints.token, methods=["GET", "POST", "OPTIONS"]),
    Route("/revoke", oauth_endpoints.revoke, methods=["GET", "POST", "OPTIONS"]),
    Route("/introspect", oauth_endpoints.introspect, methods=["GET", "POST"]),
    Route("/userinfo", oauth_endpoints.userinfo, methods=["GET", "POST", "OPTIONS"]),
    Route("/", home.home, methods=["GET"]),
    Route("/favicon.ico", home.favicon, methods=["GET"]),  # browsers ask for it anyway: the SVG icon
    Route("/healthz", health.healthz, methods=["GET"]),  # the process answers
    Route("/readyz", health.readyz, methods=["GET"]),  # database, schema and state store reachable
    Route("/metrics", metrics_endpoint.metrics, methods=["GET"]),  # Prometheus, for IDP_METRICS_ALLOWED only
    # GET/HEAD /.well-known/openid-configuration and /jwks: answered before routing by
    # static_documents.StaticDocumentsMiddleware (precomputed bytes)
    Route("/authorize", authorize.authorize, methods=["GET", "POST"]),
    Route("/authorize/resume", authorize.resume, methods=["GET"]),
    # one-time links (idp/web/links.py): the secret in the query string, never the path
    Route("/link", links.show_confirmation, methods=["GET"]),
    Route("/link", links.confirm, methods=["POST"]),
    Route("/link/password", links.show_password, methods=["GET"]),
    Route("/link/password", links.choose_password, methods=["POST"]),
    Route("/login", login.show_login, methods=["GET"]),
    Route("/login", login.submit_login, methods=["POST"]),
    # the passkey step's JSON (idp/static/passkeys.js)
    Route("/login/passkey/options", login.passkey_options, methods=["POST"]),
    Route("/login/passkey/verify", login.passkey_verify, methods=["POST"]),
    Route("/login/forgot", forgot.show_form, methods=["GET"]),  # Forgot password? (idp/web/forgot.py)
    Route("/login/forgot", forgot.submit, methods=["POST"]),
    # the passkey enrolment step's JSON (an invitation's chain, idp/static/passkeys.js)
    Route("/login/enrol_passkey/options", login.enrol_passkey_options, methods=["POST"]),
    Route("/login/enrol_passkey/verify", login.enrol_passkey_verify, methods=["POST"]),
    # every registered step (idp/login/steps/): its page and its form, /login/<step name>
    Route("/login/{step}", login.show_step, methods=["GET"]),
    Route("/login/{step}", login.submit_step, methods=["POST"]),
    # self-service (idp/web/account.py)
    Route("/account", account.account_page, methods=["GET"]),
    Route("/account/totp/setup", account.totp_setup, methods=["POST"]),
    Route("/account/totp/confirm", account.totp_confirm, methods=["POST"]),
    Route("/account/totp/disable", account.totp_disable, methods=["POST"]),
    Route("/account/backup-codes", account.regenerate_backup_codes, methods=["POST"]),
    Route("/account/password", account.change_password, methods=["POST"]),
    Route("/account/sessions/end-others", account.end_other_sessions, methods=["POST"]),
    Route("/account/sessions/{session_id:int}/end", account.end_one_session, methods=["POST"]),
    Route("/account/passkeys/options", account_passkeys.registration_options, methods=["POST"]),
    Route("/account/passkeys", account_passkeys.register, methods=["POST"]),
    Route("/account/passkeys/{passkey_id:int}/rename", account_passkeys.rename, methods=["POST"]),
    Route("/account/passkeys/{passkey_id:int}/remove", account_passkeys.remove, methods=["POST"]),
    Route("/logout", logout.end_session_endpoint, methods=["GET", "POST"]),  # RP-Initiated Logout
    Route("/consent", consent.show_consent, methods=["GET"]),
    Route("/consent", consent.submit_consent, methods=["POST"]),
    Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
]
