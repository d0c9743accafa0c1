"""The services a request handler may use, built once by the composition root."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from idp.clock import Clock
from idp.lockout import Lockout
from idp.login.sessions import EndedSession, SessionPolicy
from idp.mail.mailer import Mailer
from idp.mfa.factors import SecondFactors
from idp.mfa.passkeys import Passkeys
from idp.oidc.context import OidcContext
from idp.oidc.discovery import DiscoveryDocument
from idp.oidc.server import IdpAuthorizationServer
from idp.security.client_ip import Network
from idp.security.keyring import Keyring
from idp.security.outbound import Outbound
from idp.security.passwords import PasswordHashing
from idp.security.rate_limits import RateLimits
from idp.settings import Settings
from idp.state.store import StateStore


@dataclass(frozen=True)
class Services:
    settings: Settings
    clock: Clock  # also carried by every unit of work from `sessions` (idp/clock.py)
    engine: Engine
    sessions: sessionmaker[Session]
    keyring: Keyring
    store: StateStore
    hashing: PasswordHashing
    oidc: OidcContext
    server: IdpAuthorizationServer
    session_policy: SessionPolicy
    trusted_proxies: tuple[Network, ...]
    metrics_allowed: tuple[Network, ...]  # who may read /metrics; empty = off
    discovery: DiscoveryDocument  # its bytes follow the scopes clients register
    blocking_inline: bool  # see idp/web/blocking.py
    rate_limits: RateLimits
    lockout: Lockout
    factors: SecondFactors
    passkeys: Passkeys
    outbound: Outbound  # every call idp makes out (back-channel logout; jwks_uri through oidc)
    mail: Mailer  # notices by e-mail, off the request path; off without IDP_SMTP_URL (idp/mail/)
    # sessions the start-up sync of IDP_CLIENTS_FILE ended (an app withdrawn from users): their
    # back-channel logouts go out once the server runs (idp/app.py's lifespan)
    ended_at_start: tuple[EndedSession, ...] = ()
