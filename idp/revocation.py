"""Ending grants (RFC 7009 §2.1): a grant is every token issued from one authorization code
(its family). Whatever ends a grant's refresh tokens ends its access tokens too, in the same
unit of work, and so do its codes not redeemed yet. Userinfo and introspection then see
`revoked_at` in the one row they already read: the death is written here, on the revoking
side, and costs token requests nothing.

A JWT access token (a client's access_token_format = "jwt") has no row to mark: each
revocation here also leaves a marker in token_revocations, by grant, user, or user at a
client, kept while a JWT issued before it could still live; userinfo and introspection hold
the live markers in memory (idp/oidc/access_jwt.py)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import ColumnElement, Table, delete, insert, select, update
from sqlalchemy.orm import Session

from idp.clock import clock_of
from idp.db.models import AccessToken, AuthorizationCode, RefreshToken, TokenRevocation, User

# The longest a JWT access token lives (the clients file refuses more): a marker older than
# this, plus a minute of clock skew, can no longer match a live token.
JWT_ACCESS_MAX_SECONDS = 300
_MARKER_KEPT = timedelta(seconds=JWT_ACCESS_MAX_SECONDS + 60)
_INSERT_MARKER = insert(cast(Table, TokenRevocation.__table__))


def revoke_family(db: Session, family_id: str) -> None:
    """One grant: on code reuse, refresh-token reuse, /revoke of a refresh token."""
    revoke_families(db, [family_id])


def revoke_families(db: Session, family_ids: Collection[str]) -> None:
    if family_ids:
        _revoke(db, RefreshToken.family_id.in_(family_ids), AccessToken.family_id.in_(family_ids))
        mark_revoked(db, (("grant", family) for family in family_ids))


def revoke_session_grants(db: Session, sid: str) -> None:
    """The grants approved by the IdP session `sid`, when it ends (logout, the per-user
    cap, signing out elsewhere), except those granted offline_access: that scope exists so
    an RP keeps access when the user is gone. A code not redeemed yet dies too: its tokens
    would be born after the revocation and escape it."""
    codes = db.execute(select(AuthorizationCode.family_id, AuthorizationCode.scope).where(AuthorizationCode.sid == sid))
    families = [family for family, scope in codes if "offline_access" not in scope.split()]
    revoke_families(db, families)
    if families:
        _expire_codes(db, AuthorizationCode.family_id.in_(families))


def revoke_all_grants(db: Session, user_id: int) -> None:
    """Every grant of the user, offline_access ones included (password change, disable,
    second factors reset or removed, recovery)."""
    _revoke(db, RefreshToken.user_id == user_id, AccessToken.user_id == user_id)
    mark_revoked(db, [("user", _subject_of(db, user_id))])
    _expire_codes(db, AuthorizationCode.user_id == user_id)


def revoke_user_grants_at_client(db: Session, user_id: int, client_id: str) -> None:
    """Every grant of the user at one client, offline_access ones included (e.g. the user is
    no longer in the client's allowed groups)."""
    _revoke(
        db,
        (RefreshToken.user_id == user_id) & (RefreshToken.client_id == client_id),
        (AccessToken.user_id == user_id) & (AccessToken.client_id == client_id),
    )
    mark_revoked(db, [("user_client", f"{_subject_of(db, user_id)} {client_id}")])
    _expire_codes(db, (AuthorizationCode.user_id == user_id) & (AuthorizationCode.client_id == client_id))


def _subject_of(db: Session, user_id: int) -> str:
    """A JWT access token names its user by `sub` alone (the row id is nobody's business)."""
    return str(db.scalar(select(User.subject).where(User.id == user_id)))


def _expire_codes(db: Session, codes: ColumnElement[bool]) -> None:
    """Codes issued but not redeemed yet expire now (a redemption then finds an expired code:
    invalid_grant, not the reuse alarm a used one would raise)."""
    now = clock_of(db).now()
    db.execute(
        update(AuthorizationCode)
        .where(codes, AuthorizationCode.used_at.is_(None), AuthorizationCode.expires_at > now)
        .values(expires_at=now)
        .execution_options(synchronize_session=False)
    )


def _revoke(db: Session, refresh_tokens: ColumnElement[bool], access_tokens: ColumnElement[bool]) -> None:
    now = clock_of(db).now()
    for model, where in ((RefreshToken, refresh_tokens), (AccessToken, access_tokens)):
        db.execute(
            update(model)
            .where(where, model.revoked_at.is_(None))
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )


def mark_revoked(db: Session, markers: Iterable[tuple[str, str]], *, until: datetime | None = None) -> None:
    """Markers for JWT access tokens: (scope, subject) pairs, each ending every such token
    of it issued until now. `until`: when the last token it could match expires (a single
    token's own exp); the longest JWT lifetime otherwise. Expired markers go in passing."""
    now = clock_of(db).now()
    rows = [
        {"scope": scope, "subject": subject, "revoked_at": now, "expires_at": until or now + _MARKER_KEPT}
        for scope, subject in markers
    ]
    if rows:
        db.execute(delete(TokenRevocation).where(TokenRevocation.expires_at <= now))
        db.connection().execute(_INSERT_MARKER, rows)


def live_markers(db: Session) -> list[tuple[str, str, datetime]]:
    """(scope, subject, revoked_at) of the markers that still matter."""
    rows = db.execute(
        select(TokenRevocation.scope, TokenRevocation.subject, TokenRevocation.revoked_at).where(
            TokenRevocation.expires_at > clock_of(db).now()
        )
    )
    return [(scope, subject, revoked_at) for scope, subject, revoked_at in rows]
