"""One-time links as stored (table one_time_links): issued, listed, confirmed by one browser,
used once, revoked. Every change is a conditional UPDATE, so two requests racing for the
same link cannot both win, and each is audited in the caller's unit of work.

A link's secret (≥ 128 bits: 32 random bytes) is shown once (the CLI's output or the mail)
and kept only as a keyed digest. Its life:

- issued: a newer link of the same kind for the same user supersedes the older ones;
- confirmed: the POST of the confirmation page (never the GET a mail scanner makes) binds
  it to that browser's login binding; from then on only that browser may use it, for
  CONFIRMED_FOR at most (past the link's own expiry too: it was confirmed in time);
- used: the one change it allows (a password, a recovery, an address verified);
- revoked: by the admin (`idp user revoke-link`), by a newer link of its kind, or by a
  password change (`revoke_open`)."""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import Select, Table, and_, false, func, insert, literal, or_, select, true, update
from sqlalchemy.orm import Session

from idp.audit.trail import record_audit
from idp.clock import clock_of
from idp.db.models import BackupCode, IdpSession, OneTimeLink, Passkey, TotpCredential, User
from idp.security.keyring import Keyring, new_secret

Kind = Literal["invite", "recover", "reset", "verify"]
KINDS: tuple[Kind, ...] = ("invite", "recover", "reset", "verify")

# how long a link waits to be confirmed, unless the admin says otherwise (`--expires`)
LIFETIMES: dict[str, timedelta] = {
    "invite": timedelta(hours=72),
    "recover": timedelta(hours=24),
    "reset": timedelta(minutes=30),  # Forgot password: the user is at the screen right now
    "verify": timedelta(hours=48),
}
MAX_LIFETIME = timedelta(days=14)
MIN_LIFETIME = timedelta(minutes=5)
CONFIRMED_FOR = timedelta(minutes=30)  # from the confirming POST to the change it allows
GRACE = timedelta(minutes=15)  # after an invitation's sign-in: one credential without re-authentication
# kinds a password change revokes (an address verification proves the address, not the password)
PASSWORD_KINDS: tuple[Kind, ...] = ("invite", "recover", "reset")

SECRET_BYTES = 32
_SECRET_SHAPE = re.compile(r"[A-Za-z0-9_-]{40,64}")
_LINK_ID_SHAPE = re.compile(r"[a-z0-9]{12}")
Refusal = Literal["unknown", "expired", "used", "revoked", "other_browser"]


@dataclass(frozen=True)
class Issued:
    link_id: str
    secret: str  # shown once: in the mail or the CLI's output, never stored
    kind: Kind
    user_id: int
    expires_at: datetime
    superseded: int  # older links of the same kind revoked by this one


@dataclass(frozen=True)
class Link:
    link_id: str
    user_id: int
    kind: Kind
    email: str | None
    issued_by: str
    created_at: datetime
    expires_at: datetime
    confirmed_at: datetime | None
    used_at: datetime | None
    revoked_at: datetime | None
    revoked_reason: str | None

    def state(self, now: datetime) -> str:
        """pending, confirmed, used, revoked (with why) or expired: for `idp user links`."""
        if self.used_at is not None:
            return "used"
        if self.revoked_at is not None:
            return f"revoked ({self.revoked_reason})"
        if self.confirmed_at is not None:
            return "confirmed" if now < self.confirmed_at + CONFIRMED_FOR else "expired"
        return "pending" if now < self.expires_at else "expired"


@dataclass(frozen=True)
class Refused:
    reason: Refusal
    user_id: int | None = None


def _link(row: OneTimeLink) -> Link:
    return Link(
        link_id=row.link_id,
        user_id=row.user_id,
        kind=row.kind,  # type: ignore[arg-type]
        email=row.email,
        issued_by=row.issued_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        confirmed_at=row.confirmed_at,
        used_at=row.used_at,
        revoked_at=row.revoked_at,
        revoked_reason=row.revoked_reason,
    )


def secret_digest(keyring: Keyring, secret: str) -> str:
    return keyring.digest("one-time-link:" + secret)


def well_formed(secret: object) -> bool:
    """Could be a secret idp made (checked before any lookup: a long or odd value costs nothing)."""
    return isinstance(secret, str) and _SECRET_SHAPE.fullmatch(secret) is not None


def well_formed_id(link_id: object) -> bool:
    return isinstance(link_id, str) and _LINK_ID_SHAPE.fullmatch(link_id) is not None


def lifetime_of(kind: Kind, wanted: timedelta | None) -> timedelta:
    """The admin's `--expires`, within bounds (ValueError naming them), else the kind's default."""
    if wanted is None:
        return LIFETIMES[kind]
    if not MIN_LIFETIME <= wanted <= MAX_LIFETIME:
        raise ValueError("must be between 5 minutes and 14 days")
    return wanted


def _open(now: datetime) -> object:
    """Neither used nor revoked, and still waiting for (or within) its confirmation."""
    return and_(
        OneTimeLink.used_at.is_(None),
        OneTimeLink.revoked_at.is_(None),
        or_(
            and_(OneTimeLink.confirmed_at.is_(None), OneTimeLink.expires_at > now),
            OneTimeLink.confirmed_at > now - CONFIRMED_FOR,
        ),
    )


def issue(
    db: Session,
    keyring: Keyring,
    user_id: int,
    kind: Kind,
    *,
    lifetime: timedelta | None = None,
    by: str = "cli",
    email: str | None = None,
    ip: str | None = None,
) -> Issued:
    now = clock_of(db).now()
    superseded = revoke_open(db, user_id, kinds=(kind,), reason="superseded", audit=False)
    secret = new_secret(SECRET_BYTES)
    expires_at = now + lifetime_of(kind, lifetime)
    link_id = secrets.token_hex(6)
    db.add(
        OneTimeLink(
            link_id=link_id,
            user_id=user_id,
            kind=kind,
            secret_digest=secret_digest(keyring, secret),
            issued_by=by,
            email=email,
            created_at=now,
            expires_at=expires_at,
        )
    )
    db.flush()
    record_audit(
        db,
        "link.issued",
        user_id=user_id,
        ip=ip,
        outcome="success",
        link_kind=kind,
        link_id=link_id,
        by=by,
        expires_at=expires_at.isoformat(timespec="seconds"),
        superseded=superseded,
    )
    return Issued(link_id, secret, kind, user_id, expires_at, superseded)


@dataclass(frozen=True)
class Offer:
    """What issue_if_reachable made: a secret and an id in every case, stored only for
    `user_id` (None: the name is nobody a link may reach, and nothing was written)."""

    link_id: str
    secret: str = field(repr=False)
    kind: Kind
    user_id: int | None
    expires_at: datetime
    superseded: int


def issue_if_reachable(db: Session, keyring: Keyring, username: str, kind: Kind, *, by: str) -> Offer:
    """issue() for a name anyone may type (Forgot password?), with the same two statements
    whether or not the name is an account the link may reach: an UPDATE superseding its open
    links of `kind` and an INSERT … SELECT of the new one, each touching no row for anybody
    else. Nothing is audited here: the caller writes its one row, whoever asked. `username`
    is already normalized."""
    now = clock_of(db).now()
    reachable = _reachable(username)
    superseded = db.execute(
        update(OneTimeLink)
        .where(
            OneTimeLink.user_id.in_(reachable.scalar_subquery()),
            OneTimeLink.kind == kind,
            # pending ones only: a stranger typing the name must not end a reset the user is
            # in the middle of (confirmed in their browser)
            OneTimeLink.confirmed_at.is_(None),
            _open(now),  # type: ignore[arg-type]
        )
        .values(revoked_at=now, revoked_reason="superseded")
        .returning(OneTimeLink.link_id)
        .execution_options(synchronize_session=False)  # nothing of it is loaded in this unit of work
    ).all()
    secret, link_id, expires_at = new_secret(SECRET_BYTES), secrets.token_hex(6), now + lifetime_of(kind, None)
    links = cast(Table, OneTimeLink.__table__)
    values = {
        "link_id": link_id,
        "kind": kind,
        "secret_digest": secret_digest(keyring, secret),
        "issued_by": by,
        "created_at": now,
        "expires_at": expires_at,
    }
    # the address it is mailed to, recorded: changing the address revokes the link
    row = reachable.with_only_columns(
        User.id, User.email, *(literal(v, links.c[k].type).label(k) for k, v in values.items())
    )
    inserted = db.execute(
        insert(links).from_select(["user_id", "email", *values], row).returning(links.c.user_id)
    ).first()
    user_id = inserted.user_id if inserted is not None else None
    return Offer(link_id, secret, kind, user_id, expires_at, len(superseded))


def _reachable(username: str) -> Select[int]:
    """The account a mailed link may reach by that name: enabled, not deleted, and with a
    verified address (whoever controls an unverified one could take the account over)."""
    return select(User.id).where(
        User.username == username,
        User.disabled == false(),
        User.deleted_at.is_(None),
        func.coalesce(User.email, "") != "",
        User.email_verified == true(),
    )


def peek(db: Session, keyring: Keyring, secret: str) -> Link | Refused:
    """What the confirmation page (a GET) may say about a link: it changes nothing."""
    row = db.scalar(select(OneTimeLink).where(OneTimeLink.secret_digest == secret_digest(keyring, secret)))
    if row is None:
        return Refused("unknown")
    refusal = _refusal(row, clock_of(db).now())
    if refusal not in (None, "other_browser"):  # confirmed (by whichever browser): still shown, changed by nothing
        return Refused(refusal, row.user_id)
    return _link(row)


def _refusal(row: OneTimeLink, now: datetime, browser: str | None = None) -> Refusal | None:
    if row.used_at is not None:
        return "used"
    if row.revoked_at is not None:
        return "revoked"
    if row.confirmed_at is None:
        return "expired" if now >= row.expires_at else None
    if now >= row.confirmed_at + CONFIRMED_FOR:
        return "expired"
    if browser is None or row.browser is None or not hmac.compare_digest(row.browser, browser):
        return "other_browser"
    return None


def confirm(
    db: Session, keyring: Keyring, secret: str, browser: str, *, ip: str | None, user_agent: str | None
) -> Link | Refused:
    """The confirming POST: binds a pending link to `browser` (one conditional UPDATE); the same
    browser confirming again (a double click, a reload) gets the same link; any other is refused.
    Audited either way (link.confirmed, link.refused with the reason)."""
    now = clock_of(db).now()
    digest = secret_digest(keyring, secret)
    claimed = db.execute(
        update(OneTimeLink)
        .where(
            OneTimeLink.secret_digest == digest,
            OneTimeLink.confirmed_at.is_(None),
            OneTimeLink.used_at.is_(None),
            OneTimeLink.revoked_at.is_(None),
            OneTimeLink.expires_at > now,
        )
        .values(confirmed_at=now, browser=browser)
        .returning(OneTimeLink.id)
    ).first()
    row = db.scalar(select(OneTimeLink).where(OneTimeLink.secret_digest == digest))
    if row is None:
        record_audit(
            db, "link.refused", ip=ip, user_agent=user_agent, outcome="refused", reason="unknown", at="confirm"
        )
        return Refused("unknown")
    if claimed is not None:
        _audit(db, "link.confirmed", row.user_id, row.kind, row.link_id, ip=ip, user_agent=user_agent)
        return _link(row)
    refusal = _refusal(row, now, browser)
    if refusal is None:  # this browser confirmed it already
        return _link(row)
    _audit_refused(db, row, refusal, ip=ip, user_agent=user_agent, at="confirm")
    return Refused(refusal, row.user_id)


def bound(
    db: Session, link_id: str, browser: str | None, *, ip: str | None = None, user_agent: str | None = None
) -> Link | Refused:
    """The link `link_id` as confirmed by this browser, still unused: what the pages after the
    confirmation act on. A refusal is audited (who presented someone else's link id)."""
    row = db.scalar(select(OneTimeLink).where(OneTimeLink.link_id == link_id)) if well_formed_id(link_id) else None
    if row is None:
        return Refused("unknown")
    # not confirmed yet: nothing to act on, and nothing said about it (the id is not a secret)
    refusal = "unknown" if row.confirmed_at is None else _refusal(row, clock_of(db).now(), browser)
    if refusal is not None:
        _audit_refused(db, row, refusal, ip=ip, user_agent=user_agent, at="use")
        return Refused(refusal, row.user_id)
    return _link(row)


def use(db: Session, link_id: str, browser: str, *, ip: str | None, user_agent: str | None) -> bool:
    """Spends the link (one conditional UPDATE): True once; False when another request of the
    same browser spent it first, or it was revoked or ran out meanwhile."""
    now = clock_of(db).now()
    spent = db.execute(
        update(OneTimeLink)
        .where(
            OneTimeLink.link_id == link_id,
            OneTimeLink.browser == browser,
            OneTimeLink.used_at.is_(None),
            OneTimeLink.revoked_at.is_(None),
            OneTimeLink.confirmed_at > now - CONFIRMED_FOR,
        )
        .values(used_at=now)
        .returning(OneTimeLink.user_id, OneTimeLink.kind)
    ).first()
    if spent is None:
        return False
    _audit(db, "link.used", spent.user_id, spent.kind, link_id, ip=ip, user_agent=user_agent)
    return True


def use_unbound(
    db: Session, keyring: Keyring, secret: str, *, ip: str | None, user_agent: str | None
) -> Link | Refused:
    """An address verification: its confirming POST is its use (nothing follows in the
    browser, so there is nothing to bind)."""
    now = clock_of(db).now()
    digest = secret_digest(keyring, secret)
    spent = db.execute(
        update(OneTimeLink)
        .where(
            OneTimeLink.secret_digest == digest,
            OneTimeLink.kind == "verify",
            OneTimeLink.used_at.is_(None),
            OneTimeLink.revoked_at.is_(None),
            OneTimeLink.expires_at > now,
        )
        .values(confirmed_at=now, used_at=now)
        .returning(OneTimeLink.id)
    ).first()
    row = db.scalar(select(OneTimeLink).where(OneTimeLink.secret_digest == digest))
    if row is None or row.kind != "verify":
        record_audit(db, "link.refused", ip=ip, user_agent=user_agent, outcome="refused", reason="unknown", at="use")
        return Refused("unknown")
    if spent is None:
        refusal = _refusal(row, now) or "used"
        _audit_refused(db, row, refusal, ip=ip, user_agent=user_agent, at="use")
        return Refused(refusal, row.user_id)
    _audit(db, "link.used", row.user_id, row.kind, row.link_id, ip=ip, user_agent=user_agent)
    return _link(row)


def note_session(db: Session, link_id: str, sid: str) -> None:
    """The session the link's sign-in started (the invitation's grace is this session's)."""
    db.execute(update(OneTimeLink).where(OneTimeLink.link_id == link_id).values(session_sid=sid))


def revoke(db: Session, user_id: int, link_id: str, *, by: str = "cli") -> bool:
    """`idp user revoke-link`: False when the user has no such open link."""
    now = clock_of(db).now()
    done = db.execute(
        update(OneTimeLink)
        .where(OneTimeLink.user_id == user_id, OneTimeLink.link_id == link_id, _open(now))  # type: ignore[arg-type]
        .values(revoked_at=now, revoked_reason="admin")
        .returning(OneTimeLink.kind)
    ).first()
    if done is None:
        return False
    record_audit(db, "link.revoked", user_id=user_id, outcome="success", link_id=link_id, link_kind=done.kind, by=by)
    return True


def revoke_open(
    db: Session, user_id: int, *, kinds: tuple[Kind, ...] = PASSWORD_KINDS, reason: str, audit: bool = True
) -> int:
    """Revokes every open link of `kinds` of the user (a password change: every invitation,
    recovery and reset link); the number revoked."""
    return _revoke_where(db, user_id, OneTimeLink.kind.in_(kinds), reason=reason, audit=audit)


def revoke_sent_to_old_address(db: Session, user_id: int, new_email: str | None) -> int:
    """The address changed (an admin correcting a typo, say): every open link mailed to
    another address is revoked, whatever its kind, so whoever reads the old mailbox keeps
    nothing. Printed links (no address recorded) stay."""
    sent_elsewhere = OneTimeLink.email.is_not(None)
    if new_email is not None:
        sent_elsewhere = and_(sent_elsewhere, func.lower(OneTimeLink.email) != new_email.lower())  # type: ignore[assignment]
    return _revoke_where(db, user_id, sent_elsewhere, reason="address_changed")


def _revoke_where(db: Session, user_id: int, which: object, *, reason: str, audit: bool = True) -> int:
    """Revokes the user's open links `which` selects, audited as one row; the number revoked."""
    now = clock_of(db).now()
    revoked = db.execute(
        update(OneTimeLink)
        .where(OneTimeLink.user_id == user_id, which, _open(now))  # type: ignore[arg-type]
        .values(revoked_at=now, revoked_reason=reason)
        .returning(OneTimeLink.link_id)
    ).all()
    if revoked and audit:
        record_audit(
            db, "link.revoked", user_id=user_id, outcome="success", reason=reason, link_ids=[r[0] for r in revoked]
        )
    return len(revoked)


def links_of(db: Session, user_id: int) -> list[Link]:
    rows = db.scalars(
        select(OneTimeLink).where(OneTimeLink.user_id == user_id).order_by(OneTimeLink.created_at, OneTimeLink.id)
    )
    return [_link(row) for row in rows]


def in_grace(db: Session, user_id: int, sid: str) -> bool:
    """The session `sid` was started by an invitation confirmed within GRACE, and no
    credential was added since the session began: it may add one without signing in again."""
    now = clock_of(db).now()
    link = db.scalar(
        select(OneTimeLink).where(
            OneTimeLink.user_id == user_id,
            OneTimeLink.session_sid == sid,
            OneTimeLink.kind == "invite",
            OneTimeLink.used_at.is_not(None),
        )
    )
    if link is None or link.confirmed_at is None or now >= link.confirmed_at + GRACE:
        return False
    # since the session began, not since the link was used: what the chain enrolled before
    # it (the TOTP or passkey the user's groups require) is not the one the grace allows
    since = db.scalar(select(IdpSession.created_at).where(IdpSession.sid == sid))
    if since is None:
        return False
    added = (
        db.scalar(select(Passkey.id).where(Passkey.user_id == user_id, Passkey.created_at > since).limit(1))
        or db.scalar(
            select(TotpCredential.id)
            .where(TotpCredential.user_id == user_id, TotpCredential.confirmed_at > since)
            .limit(1)
        )
        or db.scalar(select(BackupCode.id).where(BackupCode.user_id == user_id, BackupCode.created_at > since).limit(1))
    )
    return added is None


def claim_grace(db: Session, user_id: int, sid: str) -> bool:
    """Spends the invitation's grace of session `sid` (one conditional UPDATE: of two requests
    racing to add a credential with it, one wins); False when it was spent already."""
    claimed = db.execute(
        update(OneTimeLink)
        .where(OneTimeLink.user_id == user_id, OneTimeLink.session_sid == sid, OneTimeLink.kind == "invite")
        .values(session_sid=None)
        .returning(OneTimeLink.id)
    ).first()
    return claimed is not None


def _audit_refused(
    db: Session, row: OneTimeLink, reason: Refusal, *, ip: str | None, user_agent: str | None, at: str
) -> None:
    _audit(db, "link.refused", row.user_id, row.kind, row.link_id, ip=ip, user_agent=user_agent, reason=reason, at=at)


def _audit(
    db: Session,
    event: str,
    user_id: int,
    kind: str,
    link_id: str,
    *,
    ip: str | None,
    user_agent: str | None,
    **detail: Any,
) -> None:
    """One link's event: its kind and id, never its secret; refused when `detail` says why."""
    outcome = "refused" if "reason" in detail else "success"
    record_audit(
        db,
        event,
        user_id=user_id,
        ip=ip,
        user_agent=user_agent,
        outcome=outcome,
        link_kind=kind,
        link_id=link_id,
        **detail,
    )
