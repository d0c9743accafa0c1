"""Settings: environment variables (IDP_*) over an optional TOML file named by IDP_CONFIG.

Each field documents its meaning, unit and default where it is defined. A bad value stops
start-up with a message naming the setting (SettingsError).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
DEFAULT_PORT = 8000  # `idp serve --port`


def local_issuer(port: int) -> str:
    """The issuer when IDP_ISSUER is unset: where `idp serve --port PORT` answers."""
    return f"http://localhost:{port}"


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it."""


def _meta(default: int, doc: str, *, lo: int, hi: int) -> Any:
    return field(default=default, metadata={"doc": doc, "lo": lo, "hi": hi})


@dataclass(frozen=True)
class Settings:
    issuer: str = local_issuer(DEFAULT_PORT)
    # ^ IDP_ISSUER: the public base URL; `iss` of every token. https unless localhost.
    #   Unset: http://localhost:<port>, the port `idp serve` listens on (8000 by default).
    #   Set: used as given (a proxy may sit in front of idp).
    database_url: str = "sqlite:///var/idp.db"
    # ^ IDP_DATABASE_URL: SQLAlchemy URL (sqlite:///path or postgresql+psycopg://…).
    redis_url: str = ""
    # ^ IDP_REDIS_URL: redis://… for shared short-lived state; empty = in-process store.
    secret_key: str = field(default="", repr=False)
    # ^ IDP_SECRET_KEY: master key (≥32 chars) from which every encryption and digest key
    #   is derived. Required unless the issuer is localhost, where one is generated into
    #   data_dir/secret.key on first start and kept.
    clients_file: str = ""
    # ^ IDP_CLIENTS_FILE: clients TOML synced into the database at start.
    trusted_proxies: tuple[str, ...] = ()
    # ^ IDP_TRUSTED_PROXIES: comma-separated CIDRs whose X-Forwarded-For is believed.
    metrics_allowed: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # ^ IDP_METRICS_ALLOWED: comma-separated CIDRs whose clients may read /metrics (the
    #   client address as worked out with IDP_TRUSTED_PROXIES); empty = /metrics is off (404).
    outbound_allowed_networks: tuple[str, ...] = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
    # ^ IDP_OUTBOUND_ALLOWED_NETWORKS: comma-separated CIDRs idp may call out to (client key
    #   sets at jwks_uri, back-channel logout), judged on the address connected to; empty =
    #   no outbound calls. Loopback (127.0.0.0/8, ::1) is added when the issuer is localhost.
    #   Loopback, link-local (169.254.0.0/16: the cloud metadata service), 0.0.0.0/8 and
    #   multicast are allowed only by a listed network inside them, never by 0.0.0.0/0.
    access_log: int = _meta(1, "1 = one JSON line per request on stderr (logger idp.access)", lo=0, hi=1)
    data_dir: str = "var"
    # ^ IDP_DATA_DIR: where the generated development master key lives.
    smtp_url: str = field(default="", repr=False)
    # ^ IDP_SMTP_URL: where e-mail goes out; empty = idp sends none (everything works without).
    #   smtps://[user[:password]@]host[:465] (TLS from the first byte) or smtp://…host[:587]
    #   (STARTTLS required: nothing is sent to a server that does not offer it); user and
    #   password percent-encoded. smtp://…?starttls=off only for a loopback host (a local relay).
    smtp_password_file: str = ""
    # ^ IDP_SMTP_PASSWORD_FILE: a file holding the SMTP password (its trailing newline dropped),
    #   instead of one in IDP_SMTP_URL, which then names only the user.
    smtp_ca_file: str = ""
    # ^ IDP_SMTP_CA_FILE: PEM file of the CAs trusted for the SMTP server's certificate (a
    #   private relay's); empty = the system's. The certificate is always verified.
    mail_from: str = ""
    # ^ IDP_MAIL_FROM: the From of every mail, `id@example.com` or `Example ID <id@example.com>`;
    #   required with IDP_SMTP_URL.
    code_ttl_seconds: int = _meta(60, "authorization code lifetime", lo=1, hi=600)
    access_token_ttl_seconds: int = _meta(900, "access token lifetime", lo=30, hi=86400)
    id_token_ttl_seconds: int = _meta(3600, "ID token lifetime", lo=30, hi=86400)
    key_rotation_days: int = _meta(
        0, "age in days at which a signing key some client uses is rotated; 0 = off", lo=0, hi=3650
    )
    # ^ Checked by every process on its key reload tick; the successor is published at once and
    #   signs from PUBLISH_LEAD_SECONDS later, as with `idp keys rotate` (idp/oidc/key_schedule.py).
    client_assertion_max_seconds: int = _meta(
        300, "longest private_key_jwt assertion: exp at most this after iat, and after receipt", lo=30, hi=3600
    )
    # ^ An assertion is single use: its jti is kept until its exp (plus 30 s of clock leeway),
    #   so a longer life costs state-store space and widens the window for a stolen one. Most
    #   RP libraries sign for 60 s; Authlib's client signs for 3600 s (README, private_key_jwt).
    refresh_token_ttl_seconds: int = _meta(14 * 86400, "refresh token idle (sliding) lifetime", lo=60, hi=31536000)
    refresh_token_absolute_ttl_seconds: int = _meta(
        30 * 86400, "refresh token family absolute lifetime", lo=60, hi=31536000
    )
    refresh_grace_seconds: int = _meta(
        0, "window in which a raced refresh gets the same successor; 0 = off", lo=0, hi=60
    )
    login_ttl_seconds: int = _meta(600, "how long a parked login transaction waits for the user", lo=60, hi=3600)
    login_untouched_ttl_seconds: int = _meta(
        180,
        "how long a parked request waits for its first login step or consent decision (at most IDP_LOGIN_TTL_SECONDS)",
        lo=30,
        hi=3600,
    )
    # ^ Anyone can park requests without signing in: those nobody acts on go early. Three minutes
    #   cover opening the page, fetching a password from a manager or a phone and a retry; the
    #   first step that succeeds saves the transaction again for IDP_LOGIN_TTL_SECONDS.
    #   A larger value than IDP_LOGIN_TTL_SECONDS is lowered to it.
    session_idle_seconds: int = _meta(8 * 3600, "IdP session idle lifetime", lo=60, hi=31536000)
    session_absolute_seconds: int = _meta(30 * 86400, "IdP session absolute lifetime", lo=60, hi=31536000)
    argon2_time_cost: int = _meta(3, "Argon2id iterations", lo=1, hi=20)
    argon2_memory_kib: int = _meta(65536, "Argon2id memory per hash in KiB", lo=8192, hi=4194304)
    max_concurrent_hashes: int = _meta(0, "Argon2 hashes run at once (0 = CPU count)", lo=0, hi=1024)
    max_body_bytes: int = _meta(65536, "largest request body accepted", lo=1024, hi=10485760)
    sessions_per_user: int = _meta(10, "concurrent IdP sessions per user; the oldest is ended beyond it", lo=1, hi=1000)
    reauth_seconds: int = _meta(600, "how recent a sign-in sensitive account actions need", lo=30, hi=86400)
    passkey_removal_ends_sessions: int = _meta(1, "1 = removing a passkey ends the user's other sessions", lo=0, hi=1)
    lockout_attempts: int = _meta(5, "failed password/code attempts that lock an account", lo=1, hi=100)
    lockout_seconds: int = _meta(1800, "how long a locked account stays locked", lo=10, hi=86400)
    # Rate limits, in the `limits` notation ("N/[M]second|minute|hour|day", e.g. "30/10minutes",
    # several joined by ";"), or "off". Login, passkey-options, authorize, reset and token limits are
    # shared by every process through Redis when IDP_REDIS_URL is set (per process while Redis is
    # unreachable); the site-wide limit is per process, a flood guard checked before anything
    # else (nginx's limit_req is the cross-process first line in front of it). "Per client
    # IP" means per address for IPv4 and per /64 for IPv6.
    rate_limit_login_failures_ip: str = "30/10minutes"
    # ^ IDP_RATE_LIMIT_LOGIN_FAILURES_IP: failed credential checks (wrong password or unknown
    #   name, wrong code or backup code, failed passkey assertion) per client IP. Checked before
    #   every login step, spent only when the step failed: an office behind one address signs
    #   in freely, a password sprayer gets this many guesses across all accounts.
    rate_limit_login_ip: str = "120/minute"
    # ^ IDP_RATE_LIMIT_LOGIN_IP: login steps (password, code, backup code, enrolment code,
    #   passkey verify) and /account's password and code checks, successful or not, per
    #   client IP: a flood guard on the Argon2 work.
    rate_limit_passkey_options_ip: str = "120/minute"
    # ^ IDP_RATE_LIMIT_PASSKEY_OPTIONS_IP: passkey sign-in options per client IP (the login page
    #   asks for them on every load).
    rate_limit_login_account: str = "10/minute;100/hour"
    # ^ IDP_RATE_LIMIT_LOGIN_ACCOUNT: login steps per account name typed, known or not.
    rate_limit_token_client: str = "200/second"
    # ^ IDP_RATE_LIMIT_TOKEN_CLIENT: token endpoint requests per client_id.
    rate_limit_authorize_ip: str = "300/minute"
    # ^ IDP_RATE_LIMIT_AUTHORIZE_IP: authorization requests that park a login or consent
    #   transaction, per client IP (a request answered at once, with a code or an error, counts
    #   nothing): bounds the state an unauthenticated address can hold, while an office behind
    #   one NAT may have 300 people start a sign-in in the same minute.
    rate_limit_site_ip: str = "100/second"
    # ^ IDP_RATE_LIMIT_SITE_IP: every request, per client IP, per process.
    rate_limit_reset_ip: str = "10/minute;50/hour"
    # ^ IDP_RATE_LIMIT_RESET_IP: "Forgot password?" requests per client IP: each may send a
    #   mail, so this bounds the mail one address can make idp send to anyone.
    rate_limit_reset_account: str = "3/hour"
    # ^ IDP_RATE_LIMIT_RESET_ACCOUNT: "Forgot password?" requests per account name typed,
    #   known or not: bounds the reset mail one mailbox can receive.

    @property
    def issuer_is_local(self) -> bool:
        return (urlsplit(self.issuer).hostname or "") in LOCAL_HOSTS

    @property
    def secure_cookies(self) -> bool:
        # Secure cookies are not sent over http://localhost, the one place http is allowed.
        return not (self.issuer.startswith("http://") and self.issuer_is_local)


def load_settings(
    environ: Mapping[str, str] | None = None, *, serve_port: int | None = None, **overrides: Any
) -> Settings:
    """Reads IDP_CONFIG's TOML (if any), then IDP_* variables, then keyword overrides.
    `serve_port` is the port `idp serve` listens on: the issuer's port when none of them
    names an issuer (without it, DEFAULT_PORT)."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    raw.update(_read_config_file(env.get("IDP_CONFIG", "")))
    for f in fields(Settings):
        value = env.get(f"IDP_{f.name.upper()}")
        if value is not None:
            raw[f.name] = value
    raw.update(overrides)
    if serve_port is not None and "issuer" not in raw:
        raw["issuer"] = _issuer_for_port(serve_port)
    if (
        "secret_key" in raw
        and isinstance(raw["secret_key"], str)
        and raw["secret_key"]
        and not raw["secret_key"].strip()
    ):
        raise SettingsError("IDP_SECRET_KEY: is blank")
    settings = Settings(**{f.name: _coerce(f.name, raw[f.name], f.type) for f in fields(Settings) if f.name in raw})
    return _validated(settings)


def _issuer_for_port(port: int) -> str:
    if port == 0:
        raise SettingsError(
            "IDP_ISSUER: must be set to serve on --port 0 (the system picks the port, so the "
            "issuer cannot be derived from it)"
        )
    return local_issuer(port)


def find_issuer_port_mismatch(issuer: str, served_port: int) -> str | None:
    """A warning when a plain-http localhost issuer names another port than the one served:
    relying parties and browsers go to the issuer's port, which only works if something
    there forwards to idp. No warning for an https issuer (idp serves plain http, so a TLS
    proxy is in front) nor for port 0 (the system picks the port: unknown here)."""
    parts = urlsplit(issuer)
    issuer_port = parts.port or 80
    if parts.scheme != "http" or parts.hostname not in LOCAL_HOSTS or served_port in (0, issuer_port):
        return None
    return (
        f"IDP_ISSUER is {issuer} but idp serves on port {served_port}: relying parties and browsers will "
        f"use port {issuer_port}, which works only if a proxy there forwards to idp "
        f"(unset IDP_ISSUER to use {local_issuer(served_port)})"
    )


def _read_config_file(path: str) -> dict[str, Any]:
    if not path:
        return {}
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"IDP_CONFIG: cannot read {path}: {exc}") from None
    known = {f.name for f in fields(Settings)}
    for key in data:
        if key not in known:
            raise SettingsError(f"IDP_CONFIG: unknown setting {key!r} in {path}")
    return data


def _coerce(name: str, value: Any, type_name: str) -> Any:
    label = f"IDP_{name.upper()}"
    if type_name == "int":
        if isinstance(value, bool):
            raise SettingsError(f"{label}: must be an integer")
        try:
            return int(str(value).strip())
        except ValueError:
            raise SettingsError(f"{label}: must be an integer, got {str(value)[:40]!r}") from None
    if type_name == "tuple[str, ...]":
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        return tuple(str(item).strip() for item in items if str(item).strip())
    if not isinstance(value, str):
        raise SettingsError(f"{label}: must be a string")
    return value.strip()


def _validated(s: Settings) -> Settings:
    for f in fields(Settings):
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        value = getattr(s, f.name)
        if lo is not None and not (lo <= value <= hi):
            raise SettingsError(
                f"IDP_{f.name.upper()}: must be between {lo} and {hi} ({f.metadata['doc']}), got {value}"
            )
    _check_issuer(s.issuer)
    _check_database_url(s.database_url)
    _check_mail(s)
    if s.redis_url and urlsplit(s.redis_url).scheme not in ("redis", "rediss", "unix"):
        raise SettingsError("IDP_REDIS_URL: must be a redis://, rediss:// or unix:// URL")
    for label, cidrs in (
        ("IDP_TRUSTED_PROXIES", s.trusted_proxies),
        ("IDP_METRICS_ALLOWED", s.metrics_allowed),
        ("IDP_OUTBOUND_ALLOWED_NETWORKS", s.outbound_allowed_networks),
    ):
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise SettingsError(f"{label}: {cidr!r} is not a CIDR") from None
    if s.secret_key and len(s.secret_key) < 32:
        raise SettingsError("IDP_SECRET_KEY: must be at least 32 characters")
    if not s.secret_key and not s.issuer_is_local:
        raise SettingsError("IDP_SECRET_KEY: required when the issuer is not localhost")
    if s.refresh_token_absolute_ttl_seconds < s.refresh_token_ttl_seconds:
        raise SettingsError("IDP_REFRESH_TOKEN_ABSOLUTE_TTL_SECONDS: must not be below IDP_REFRESH_TOKEN_TTL_SECONDS")
    for f in fields(Settings):
        if f.name.startswith("rate_limit_"):
            _check_rate_limit(f"IDP_{f.name.upper()}", getattr(s, f.name))
    if s.login_untouched_ttl_seconds > s.login_ttl_seconds:  # the first step's window lies within the whole
        s = replace(s, login_untouched_ttl_seconds=s.login_ttl_seconds)
    if s.max_concurrent_hashes == 0:
        s = replace(s, max_concurrent_hashes=os.cpu_count() or 1)
    return s


def _check_rate_limit(label: str, value: str) -> None:
    from limits import parse_many

    if value.lower() == "off":
        return
    try:
        if not parse_many(value):
            raise ValueError
    except ValueError:
        raise SettingsError(f"{label}: expected e.g. '30/minute;300/hour' or 'off', got {value[:60]!r}") from None


def _check_issuer(issuer: str) -> None:
    parts = urlsplit(issuer)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError("IDP_ISSUER: must be an absolute http(s) URL")
    try:
        _ = parts.port  # urlsplit checks the port only when it is read
    except ValueError:
        raise SettingsError("IDP_ISSUER: invalid port") from None
    if "@" in parts.netloc:
        raise SettingsError("IDP_ISSUER: must not contain credentials")
    if parts.query or parts.fragment or issuer.endswith("/"):
        raise SettingsError("IDP_ISSUER: must have no query, fragment or trailing slash")
    if parts.scheme == "http" and parts.hostname not in LOCAL_HOSTS:
        raise SettingsError("IDP_ISSUER: must use https unless the host is localhost")


def _check_mail(s: Settings) -> None:
    from idp.mail.config import parse_mail_from, parse_smtp_url

    if not s.smtp_url:
        if s.smtp_password_file:
            raise SettingsError("IDP_SMTP_PASSWORD_FILE: set without IDP_SMTP_URL")
        return
    try:
        target = parse_smtp_url(s.smtp_url)
    except ValueError as exc:  # the message never repeats the URL: it may hold a password
        raise SettingsError(f"IDP_SMTP_URL: {exc}") from None
    if s.smtp_password_file and (target.password is not None or not target.username):
        raise SettingsError("IDP_SMTP_PASSWORD_FILE: needs IDP_SMTP_URL to name a user and no password")
    if s.smtp_ca_file and not Path(s.smtp_ca_file).is_file():
        raise SettingsError(f"IDP_SMTP_CA_FILE: {s.smtp_ca_file} is not a file")
    if not s.mail_from:
        raise SettingsError("IDP_MAIL_FROM: required when IDP_SMTP_URL is set")
    try:
        parse_mail_from(s.mail_from)
    except ValueError as exc:
        raise SettingsError(f"IDP_MAIL_FROM: {exc}") from None


def _check_database_url(url: str) -> None:
    scheme = urlsplit(url).scheme
    if not (scheme.startswith("sqlite") or scheme.startswith("postgres")):
        raise SettingsError("IDP_DATABASE_URL: must be a sqlite:// or postgresql:// URL")
