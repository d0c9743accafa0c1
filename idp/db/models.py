"""Durable data (SQLAlchemy 2.x): users, clients, signing keys, authorization codes,
access/refresh token records, consents, IdP sessions and the audit trail.

Secrets are never stored raw: codes, tokens, session ids and client secrets as keyed
digests, private keys AEAD-encrypted, passwords as Argon2id hashes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.engine import ExecutionContext
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from idp.clock import SESSION_INFO_KEY, Clock, SystemClock

_WALL_CLOCK = SystemClock()


def _clock_now(context: ExecutionContext) -> datetime:
    """Default timestamps: the clock of the unit of work (idp/clock.py), which
    make_sessionmaker puts in the engine's execution options, ORM flushes and Core
    statements alike. A bare engine's statements (migrations, tooling) have none: the wall's."""
    clock: Clock = context.execution_options.get(SESSION_INFO_KEY, _WALL_CLOCK)
    return clock.now()


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:

        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[str]: JSON}


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(64), unique=True)  # `sub`: opaque, never the username
    username: Mapped[str] = mapped_column(String(128), unique=True)  # stored case-folded
    email: Mapped[str | None] = mapped_column(String(320))
    # `email_verified` claim: set by an admin (idp user add/set); cleared when the address
    # changes. A verified address belongs to one user (uq_users_verified_email below).
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    name: Mapped[str | None] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    require_mfa: Mapped[bool] = mapped_column(Boolean, default=False)
    # Lockout (idp/lockout.py): failures in the window that began at failures_since.
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failures_since: Mapped[datetime | None] = mapped_column()
    locked_until: Mapped[datetime | None] = mapped_column()
    # WebAuthn user handle: random, opaque, made at the first passkey registration
    webauthn_handle: Mapped[bytes | None] = mapped_column(LargeBinary, unique=True)
    created_at: Mapped[datetime] = mapped_column(default=_clock_now)
    updated_at: Mapped[datetime] = mapped_column(default=_clock_now, onupdate=_clock_now)
    # Claims an admin set (`idp user set --attr`): OIDC Core 5.1 profile claims and custom
    # ones, validated by idp/attributes.py; read with the user's row, so releasing them
    # costs the token endpoints and userinfo no query of their own.
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # `idp user set-password --must-change`: the next sign-in sets a new password (login step new_password)
    password_must_change: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # `idp user delete`: a tombstone. The row stays (its id in the audit trail, its `sub` never
    # reused); every personal field is cleared and the username is a pseudonym.
    deleted_at: Mapped[datetime | None] = mapped_column()


# Relying parties link accounts by a verified address, so two users must never both have
# the same one verified (case-insensitively). A partial unique index on an expression:
# SQLite and PostgreSQL both have them. SQLite cannot reflect expression indexes, so a batch
# migration that rebuilds `users` on SQLite must create this index again
# (tests/test_migrations.py checks it is there at head).
Index(
    "uq_users_verified_email",
    func.lower(User.email),
    unique=True,
    sqlite_where=User.email_verified,
    postgresql_where=User.email_verified,
)


class RetiredName(Base):
    """A deleted user's username or verified address, as a keyed digest only (the name itself
    is gone): `idp user add` and `idp user set --email-verified yes` refuse it, so nobody
    takes over a deleted person's identity at the relying parties."""

    __tablename__ = "retired_names"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # username | email
    digest: Mapped[str] = mapped_column(String(128), unique=True)  # Keyring.digest("retired-<kind>:" + value)
    retired_at: Mapped[datetime] = mapped_column(default=_clock_now)


class OneTimeLink(Base):
    """An invitation, recovery, password-reset or address-verification link (idp/links/).
    The secret travels in the link's query string and is kept here only as a keyed digest;
    `link_id` is the public name admins list and revoke it by. Single use: confirmed once (by
    one browser, whose binding digest it then keeps), used once, and superseded by a newer
    link of the same kind or a password change."""

    __tablename__ = "one_time_links"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    link_id: Mapped[str] = mapped_column(String(16), unique=True)  # public, not a secret
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # invite | recover | reset | verify
    secret_digest: Mapped[str] = mapped_column(String(128), unique=True)
    issued_by: Mapped[str] = mapped_column(String(16))  # cli | self (Forgot password) | system
    email: Mapped[str | None] = mapped_column(String(320))  # verify: the address it proves
    created_at: Mapped[datetime] = mapped_column(default=_clock_now)
    expires_at: Mapped[datetime] = mapped_column()
    confirmed_at: Mapped[datetime | None] = mapped_column()
    browser: Mapped[str | None] = mapped_column(String(128))  # the confirming browser's binding digest
    used_at: Mapped[datetime | None] = mapped_column()
    session_sid: Mapped[str | None] = mapped_column(
        String(64)
    )  # the session an invitation started, until its grace is spent
    revoked_at: Mapped[datetime | None] = mapped_column()
    revoked_reason: Mapped[str | None] = mapped_column(String(32))


class Group(Base):
    """A named set of users: which apps they may use (a client's allowed_groups), the least
    assurance every sign-in of theirs reaches (min_acr), the `groups` claim."""

    __tablename__ = "groups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)  # an identifier, lower case
    display_name: Mapped[str | None] = mapped_column(String(200))
    min_acr: Mapped[str | None] = mapped_column(String(8))  # mfa or phr; None = no minimum
    created_at: Mapped[datetime] = mapped_column(default=_clock_now)


class GroupMember(Base):
    __tablename__ = "group_members"
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)
    added_at: Mapped[datetime] = mapped_column(default=_clock_now)


class Client(Base):
    __tablename__ = "clients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[str] = mapped_column(String(128), unique=True)
    secret_digest: Mapped[str | None] = mapped_column(String(128))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # validated RFC 7591 metadata, minus the secret
    updated_at: Mapped[datetime] = mapped_column(default=_clock_now, onupdate=_clock_now)


class SigningKey(Base):
    __tablename__ = "signing_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kid: Mapped[str] = mapped_column(String(64), unique=True)
    alg: Mapped[str] = mapped_column(String(16))
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    private_key_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=_clock_now)
    signs_from: Mapped[datetime | None] = mapped_column()  # published before it signs; None = since created
    retired_at: Mapped[datetime | None] = mapped_column()  # stops (stopped) signing
    unpublish_at: Mapped[datetime | None] = mapped_column()  # leaves JWKS once what it signed has expired
    # `idp keys revoke`: withdrawn (leaked); kept for the record, never published nor signing again
    revoked_at: Mapped[datetime | None] = mapped_column()
    # A scheduled rotation's successor names the key it replaces: unique (uq_signing_keys_replaces_kid),
    # so two processes that find the same key due make one successor, not two.
    replaces_kid: Mapped[str | None] = mapped_column(String(64))


Index("uq_signing_keys_replaces_kid", SigningKey.replaces_kid, unique=True)


class IdpSession(Base):
    __tablename__ = "idp_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cookie_digest: Mapped[str] = mapped_column(String(128), unique=True)
    sid: Mapped[str] = mapped_column(String(64), unique=True)  # public id for the `sid` claim
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    auth_time: Mapped[datetime] = mapped_column()
    acr: Mapped[str] = mapped_column(String(16))
    amr: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=_clock_now)
    last_seen_at: Mapped[datetime] = mapped_column(default=_clock_now)
    expires_at: Mapped[datetime] = mapped_column()  # absolute end
    ended_at: Mapped[datetime | None] = mapped_column()
    user_agent: Mapped[str | None] = mapped_column(String(300))
    ip: Mapped[str | None] = mapped_column(String(64))


class SessionClient(Base):
    """Which relying parties an IdP session signed into (for logout)."""

    __tablename__ = "session_clients"
    __table_args__ = (UniqueConstraint("session_id", "client_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("idp_sessions.id", ondelete="CASCADE"))
    client_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=_clock_now)


class Consent(Base):
    __tablename__ = "consents"
    __table_args__ = (UniqueConstraint("user_id", "client_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    client_id: Mapped[str] = mapped_column(String(128))
    scope: Mapped[str] = mapped_column(Text)  # space-separated, sorted
    granted_at: Mapped[datetime] = mapped_column(default=_clock_now)


class AuthorizationCode(Base):
    __tablename__ = "authorization_codes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code_digest: Mapped[str] = mapped_column(String(128), unique=True)
    client_id: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    redirect_uri: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text)
    nonce: Mapped[str | None] = mapped_column(String(512))
    code_challenge: Mapped[str | None] = mapped_column(String(128))
    code_challenge_method: Mapped[str | None] = mapped_column(String(16))
    sid: Mapped[str | None] = mapped_column(String(64), index=True)  # ending the session ends its grants
    auth_time: Mapped[datetime] = mapped_column()
    acr: Mapped[str] = mapped_column(String(16))
    amr: Mapped[list[str]] = mapped_column(JSON)
    family_id: Mapped[str] = mapped_column(String(64), index=True)  # every token issued from this code
    created_at: Mapped[datetime] = mapped_column(default=_clock_now)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column()


class AccessToken(Base):
    __tablename__ = "access_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_digest: Mapped[str] = mapped_column(String(128), unique=True)
    client_id: Mapped[str] = mapped_column(String(128))
    # NULL for client_credentials; indexed: revoking a user's grants revokes these too
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(Text)
    family_id: Mapped[str | None] = mapped_column(String(64), index=True)
    issued_at: Mapped[datetime] = mapped_column(default=_clock_now)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime | None] = mapped_column()


class TokenRevocation(Base):
    """A revocation that JWT access tokens (RFC 9068, a client's access_token_format = "jwt")
    must hear of, as they have no row of their own to mark: every token of `scope`/`subject`
    issued at or before `revoked_at` is dead. Kept only while such a token could still live
    (`expires_at`: the revocation plus the longest JWT lifetime); every process holds the live
    ones in memory (idp/oidc/access_jwt.py)."""

    __tablename__ = "token_revocations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # token (subject: its jti) | grant (a family id) | user (a user id) | user_client ("user_id client_id")
    scope: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(200))
    revoked_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column(index=True)


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_digest: Mapped[str] = mapped_column(String(128), unique=True)
    family_id: Mapped[str] = mapped_column(String(64), index=True)
    client_id: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(Text)
    sid: Mapped[str | None] = mapped_column(String(64), index=True)
    auth_time: Mapped[datetime] = mapped_column()
    acr: Mapped[str] = mapped_column(String(16))
    amr: Mapped[list[str]] = mapped_column(JSON)
    issued_at: Mapped[datetime] = mapped_column(default=_clock_now)
    expires_at: Mapped[datetime] = mapped_column()  # sliding: issued_at + idle lifetime, capped below
    family_expires_at: Mapped[datetime] = mapped_column()  # absolute end of the family
    rotated_at: Mapped[datetime | None] = mapped_column()
    successor_digest: Mapped[str | None] = mapped_column(String(128))
    successor_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)  # only within the grace period
    # the grace period hands the successor out once (token_store.consume_grace_successor)
    successor_handed_out: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    revoked_at: Mapped[datetime | None] = mapped_column()


class TotpCredential(Base):
    """A user's TOTP authenticator (RFC 6238). The secret is AEAD-encrypted under a key
    derived from the master key for this purpose; unusable until confirmed with a code."""

    __tablename__ = "totp_credentials"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    secret_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=_clock_now)
    confirmed_at: Mapped[datetime | None] = mapped_column()
    last_used_step: Mapped[int | None] = mapped_column(Integer)  # replay guard: only later steps are accepted


class BackupCode(Base):
    """One single-use recovery code: found by a keyed digest (one row, so one Argon2
    verification per attempt), then checked against its Argon2id hash."""

    __tablename__ = "backup_codes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # keyed digest of (user, code): 40-bit codes collide across a million users, so the
    # owner is part of what is digested, and the lookup is by (user_id, lookup)
    lookup: Mapped[str] = mapped_column(String(128), index=True)
    code_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=_clock_now)
    used_at: Mapped[datetime | None] = mapped_column()


class Passkey(Base):
    """A WebAuthn credential (a passkey): its id and public key, the sign counter it last
    reported, and what the user called it."""

    __tablename__ = "passkeys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    credential_id: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)  # COSE_Key
    sign_count: Mapped[int] = mapped_column(Integer, default=0)
    transports: Mapped[list[str]] = mapped_column(JSON, default=list)
    name: Mapped[str] = mapped_column(String(64))
    backed_up: Mapped[bool] = mapped_column(Boolean, default=False)  # synced (multi-device) passkey
    created_at: Mapped[datetime] = mapped_column(default=_clock_now)
    last_used_at: Mapped[datetime | None] = mapped_column()


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=_clock_now)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[int | None] = mapped_column(Integer)
    client_id: Mapped[str | None] = mapped_column(String(128))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    outcome: Mapped[str | None] = mapped_column(String(16))  # success | failure | refused
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
