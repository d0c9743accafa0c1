"""The composition root: builds the clock, engine, store, keyring, password hashing, signing
keys and the Authlib server, and hands them to the routes through app.state. Nothing registers
itself on import; tests build an app with their own settings, store and clock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from idp.clock import Clock, SystemClock
from idp.db.engine import make_engine, make_sessionmaker
from idp.db.migrate import is_current
from idp.lockout import Lockout
from idp.login.flow import FlowServices, LoginFlow
from idp.login.sessions import EndedSession, SessionPolicy
from idp.login.step import Step
from idp.login.steps import STANDARD_STEPS
from idp.login.steps.password import normalize_username
from idp.mail.mailer import build_mailer
from idp.mail.outbox import RETRY_DELAYS_SECONDS
from idp.mfa.factors import SecondFactors
from idp.mfa.passkeys import Passkeys, RelyingParty
from idp.observability import access_log
from idp.oidc.access_jwt import RevocationList
from idp.oidc.client_key_sets import ClientKeySets
from idp.oidc.clients import ClientRegistry
from idp.oidc.context import OidcContext
from idp.oidc.discovery import DiscoveryDocument
from idp.oidc.key_schedule import RotationSchedule
from idp.oidc.server import IdpAuthorizationServer
from idp.oidc.signing_keys import KeyCache, ensure_signing_key
from idp.oidc.token_store import Lifetimes
from idp.password_census import keep_census_fresh, refresh_census
from idp.security.client_ip import parse_networks
from idp.security.keyring import Keyring, load_or_create_dev_master_key
from idp.security.outbound import Outbound, OutboundPolicy
from idp.security.passwords import PasswordHashing
from idp.security.rate_limits import RateLimits
from idp.settings import Settings, SettingsError
from idp.state.memory import MemoryStore
from idp.state.store import StateStore, StoreUnavailable, open_store
from idp.web import backchannel
from idp.web.observation import RequestObservationMiddleware
from idp.web.pages import add_template_dir
from idp.web.routes import routes
from idp.web.security_headers import SecurityHeadersMiddleware
from idp.web.services import Services
from idp.web.static_documents import StaticDocumentsMiddleware
from idp.web.throttle import SiteRateLimitMiddleware, is_api_path

log = logging.getLogger("idp")


def master_key_of(settings: Settings) -> str:
    return settings.secret_key or load_or_create_dev_master_key(settings.data_dir)


def outbound_of(settings: Settings) -> Outbound:
    """Calls out (jwks_uri, back-channel logout) only to IDP_OUTBOUND_ALLOWED_NETWORKS, plus
    loopback for an issuer on localhost (its RPs run on the same machine)."""
    return Outbound(OutboundPolicy.of(settings.outbound_allowed_networks, loopback=settings.issuer_is_local))


def build_services(
    settings: Settings,
    *,
    store: StateStore | None = None,
    hashing: PasswordHashing | None = None,
    clock: Clock | None = None,
    mail_retry_delays_seconds: Sequence[float] = RETRY_DELAYS_SECONDS,
) -> Services:
    clock = clock or SystemClock()
    engine = make_engine(settings.database_url)
    if not is_current(engine):
        raise SettingsError("IDP_DATABASE_URL: the database schema is not current; run `idp db upgrade`")
    sessions = make_sessionmaker(engine, clock)  # every unit of work carries the clock (idp/clock.py)
    keyring = Keyring(master_key_of(settings))
    with sessions.begin() as db:
        ensure_signing_key(db, keyring)
    ended_at_start: tuple[EndedSession, ...] = ()
    if settings.clients_file:
        from idp.clients_sync import sync_clients_file

        report = sync_clients_file(sessions, keyring, settings.clients_file)
        for warning in report.warnings:
            log.warning("%s", warning)
        ended_at_start = report.ended
    store = store if store is not None else open_store(settings.redis_url)  # an empty MemoryStore is falsy
    rate_limits = RateLimits(settings, digest=keyring.digest)
    lockout = Lockout(store, attempts=settings.lockout_attempts, seconds=settings.lockout_seconds)
    lifetimes = Lifetimes(
        settings.access_token_ttl_seconds,
        settings.refresh_token_ttl_seconds,
        settings.refresh_token_absolute_ttl_seconds,
        settings.refresh_grace_seconds,
    )
    outbound = outbound_of(settings)
    ctx = OidcContext(
        issuer=settings.issuer,
        keyring=keyring,
        keys=KeyCache(sessions, keyring, schedule=_rotation_schedule(settings, sessions, keyring)),
        clients=ClientRegistry(sessions, keyring),
        store=store,
        lifetimes=lifetimes,
        code_ttl_seconds=settings.code_ttl_seconds,
        id_token_ttl_seconds=settings.id_token_ttl_seconds,
        client_key_sets=ClientKeySets(outbound),
        revocations=RevocationList(sessions),
        client_assertion_max_seconds=settings.client_assertion_max_seconds,
        rate_limits=rate_limits,
    )
    _reload_caches_of(ctx)  # fail at start, not on the first request
    hashing = hashing or PasswordHashing(
        max_concurrent=settings.max_concurrent_hashes,
        time_cost=settings.argon2_time_cost,
        memory_cost_kib=settings.argon2_memory_kib,
        # one key for every process: an unknown name costs the same on each
        name_digest=lambda name: keyring.digest("dummy-params:" + normalize_username(name)),
    )
    refresh_census(sessions, hashing)  # unknown names cost what stored hashes cost (idp/password_census.py)
    return Services(
        settings=settings,
        clock=clock,
        engine=engine,
        sessions=sessions,
        keyring=keyring,
        store=store,
        hashing=hashing,
        oidc=ctx,
        server=IdpAuthorizationServer(ctx),
        session_policy=SessionPolicy(
            settings.session_idle_seconds, settings.session_absolute_seconds, settings.sessions_per_user
        ),
        trusted_proxies=parse_networks(settings.trusted_proxies),
        metrics_allowed=parse_networks(settings.metrics_allowed),
        discovery=DiscoveryDocument(settings.issuer, ctx.clients),
        blocking_inline=engine.dialect.name == "sqlite" and isinstance(store, MemoryStore),
        rate_limits=rate_limits,
        lockout=lockout,
        factors=SecondFactors(keyring, lockout, issuer=settings.issuer),
        passkeys=Passkeys(store, RelyingParty.from_issuer(settings.issuer)),
        outbound=outbound,
        mail=build_mailer(settings, sessions, clock, retry_delays_seconds=mail_retry_delays_seconds),
        ended_at_start=ended_at_start,
    )


def _rotation_schedule(
    settings: Settings, sessions: sessionmaker[Session], keyring: Keyring
) -> RotationSchedule | None:
    if not settings.key_rotation_days:
        return None
    return RotationSchedule(sessions, keyring, settings.key_rotation_days, settings.id_token_ttl_seconds)


def create_app(
    settings: Settings,
    *,
    store: StateStore | None = None,
    hashing: PasswordHashing | None = None,
    steps: Sequence[Step] = STANDARD_STEPS,
    clock: Clock | None = None,
    mail_retry_delays_seconds: Sequence[float] = RETRY_DELAYS_SECONDS,
) -> Starlette:
    services = build_services(
        settings, store=store, hashing=hashing, clock=clock, mail_retry_delays_seconds=mail_retry_delays_seconds
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for ended in services.ended_at_start:  # the RPs of sessions the start-up sync ended hear of it
            backchannel.schedule(services, ended)
        refresher = asyncio.create_task(_refresh_caches(services))
        census = asyncio.create_task(keep_census_fresh(services.sessions, services.hashing))
        yield
        refresher.cancel()
        census.cancel()
        # graceful stop: logout deliveries and queued mail finish side by side (idp/cli.py's budget)
        await asyncio.gather(
            backchannel.wait_for_deliveries(timeout=10.0), run_in_threadpool(services.mail.close, 10.0)
        )
        services.hashing.close()
        services.store.close()
        services.engine.dispose()
        access_log.flush()

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeadersMiddleware, hsts=settings.issuer.startswith("https://")),
            Middleware(RequestObservationMiddleware, services=services, routes=routes),
            Middleware(SiteRateLimitMiddleware, services=services),
            Middleware(StaticDocumentsMiddleware, services=services),
        ],
        # an exception nothing handled becomes a 500 in RequestObservationMiddleware (with its request id)
        exception_handlers={HTTPException: _http_error, StoreUnavailable: _store_unavailable},
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.login_flow = build_login_flow(services, steps)
    return app


def build_login_flow(services: Services, steps: Sequence[Step] = STANDARD_STEPS) -> LoginFlow:
    """The login chain and its steps, listed once (as Authlib registers grants): a new step
    is one module under idp/login/steps/, one template and one entry here."""
    clients = services.oidc.clients
    for step in steps:
        if step.template_dir is not None:
            add_template_dir(step.template_dir)

    def client_minimum(client_id: str) -> Sequence[str]:
        client = clients.get(client_id)
        return tuple(client.config.get("default_acr_values") or ()) if client is not None else ()

    def client_allowed_groups(client_id: str) -> frozenset[str] | None:
        client = clients.get(client_id)
        return client.allowed_groups if client is not None else frozenset()  # a client gone since: nobody

    return LoginFlow(
        FlowServices(
            sessions=services.sessions,
            store=services.store,
            keyring=services.keyring,
            hashing=services.hashing,
            lockout=services.lockout,
            factors=services.factors,
            passkeys=services.passkeys,
            rate_limits=services.rate_limits,
            session_policy=services.session_policy,
            ttl_seconds=services.settings.login_ttl_seconds,
            untouched_ttl_seconds=services.settings.login_untouched_ttl_seconds,
            client_minimum=client_minimum,
            client_allowed_groups=client_allowed_groups,
            mail=services.mail,
        ),
        steps,
    )


REFRESH_SECONDS = 5.0  # bound on how long a `clients sync` or `keys rotate` takes to reach every process


async def _refresh_caches(services: Services) -> None:
    """Clients and signing keys are read in every token request: keep them in memory and
    reload them here, off the request path, so a request never waits on this I/O."""
    while True:
        await asyncio.sleep(REFRESH_SECONDS)
        try:
            await run_in_threadpool(_reload_caches, services)
        except Exception:  # noqa: BLE001 - a database blip must not stop the refresher
            log.exception("reloading clients and signing keys failed; keeping the previous ones")


def _reload_caches(services: Services) -> None:
    _reload_caches_of(services.oidc)


def _reload_caches_of(ctx: OidcContext) -> None:
    ctx.clients.reload()
    ctx.keys.reload()
    ctx.revocations.reload()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return PlainTextResponse(exc.detail, status_code=exc.status_code, headers={"cache-control": "no-store"})


STORE_RETRY_SECONDS = 30
UNAVAILABLE_MESSAGE = (
    "Sign-in is temporarily unavailable: idp cannot reach the store that holds sign-ins in progress. "
    "Try again in a minute."
)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    """The state store (Redis) is down: hosted pages cannot run without their challenge
    state, so they say so with a 503, and nothing is checked without it (fail closed)."""
    from idp.web.pages import error_page

    log.warning("state store unavailable on %s %s: %s", request.method, request.url.path, exc)
    headers = {"retry-after": str(STORE_RETRY_SECONDS), "cache-control": "no-store"}
    if is_api_path(request.url.path):
        return JSONResponse(
            {"error": "temporarily_unavailable", "error_description": "Try again shortly."},
            status_code=503,
            headers=headers,
        )
    response = error_page(request, 503, UNAVAILABLE_MESSAGE)
    response.headers.update(headers)
    return response
