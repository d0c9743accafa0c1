"""Groups (`idp group …`): named sets of users that say which apps a user may use (a
client's allowed_groups), the least assurance every sign-in of a member reaches (min_acr),
and what the `groups` claim carries.

Names are identifiers, case-insensitive, carried in lower case (what the clients file and
the claim use); the display name is for people. Every change is audited, each command is
one transaction. Taking a user out of a group that an app requires ends what they hold at
that app at once: refresh and access tokens (offline_access ones too) are revoked, and each
of their sessions that signed in there is sent a back-channel logout (the IdP session itself
stays: it may serve other apps)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from idp.audit.trail import record_audit
from idp.clients_file import GROUP_NAME
from idp.clock import clock_of
from idp.db.models import (
    AccessToken,
    AuthorizationCode,
    Client,
    Group,
    GroupMember,
    IdpSession,
    RefreshToken,
    SessionClient,
    User,
)

# re-exported: the claims and the token side read memberships from here too
from idp.login.memberships import Membership as Membership
from idp.login.memberships import memberships_of as memberships_of
from idp.login.policy import LEVELS, may_use
from idp.login.sessions import EndedSession
from idp.login.steps.password import normalize_username
from idp.revocation import JWT_ACCESS_MAX_SECONDS, revoke_user_grants_at_client

MIN_ACR_VALUES = ("mfa", "phr")  # `pwd` is what everyone reaches: no minimum to set
_MAX_DISPLAY_NAME = 200


class GroupError(ValueError):
    """A group command cannot be done; the message is its one line."""


@dataclass(frozen=True)
class GroupInfo:
    name: str
    display_name: str | None
    min_acr: str | None
    members: tuple[str, ...]  # usernames
    required_by: tuple[str, ...]  # client_ids whose allowed_groups name it


@dataclass(frozen=True)
class MemberRemoval:
    """What taking users out of a group ended: per (user, client) the app access withdrawn,
    and the RP sessions to send back-channel logouts to (after the commit)."""

    removed: tuple[str, ...]
    withdrawn: tuple[tuple[str, str], ...]  # (username, client_id) that may no longer use the app
    ended: tuple[EndedSession, ...]


def group_name(raw: str) -> str:
    name = raw.strip().lower()
    if not GROUP_NAME.fullmatch(name):
        raise GroupError(
            f"{raw!r} is not a group name: 1-64 characters of a-z 0-9 . _ -, starting with a letter or digit"
        )
    return name


def add_group(db: Session, raw_name: str, *, display_name: str | None = None, min_acr: str | None = None) -> Group:
    name = group_name(raw_name)
    if db.scalar(select(Group.id).where(Group.name == name)) is not None:
        raise GroupError(f"a group named {name!r} already exists")
    group = Group(name=name, display_name=_display_name(display_name), min_acr=_min_acr(min_acr))
    db.add(group)
    db.flush()
    record_audit(db, "group.added", group=name, display_name=group.display_name, min_acr=group.min_acr)
    return group


def set_group(
    db: Session, raw_name: str, *, display_name: str | None = None, min_acr: str | None = None
) -> tuple[str | None, str | None]:
    """Changes what is given; returns the minimum before and after. A raised minimum applies
    to the members' next sign-in or authorization (sessions below it are stepped up)."""
    group = _group(db, raw_name)
    before = group.min_acr
    if display_name is not None:
        group.display_name = _display_name(display_name)
    if min_acr is not None:
        group.min_acr = None if min_acr == "none" else _min_acr(min_acr)
    record_audit(
        db,
        "group.changed",
        group=group.name,
        display_name=group.display_name,
        min_acr_before=before,
        min_acr=group.min_acr,
    )
    return before, group.min_acr


def remove_group(db: Session, raw_name: str) -> None:
    """Refused while a client's allowed_groups names it (the clients file would no longer
    validate, and that app would silently lose its members)."""
    group = _group(db, raw_name)
    naming = clients_requiring(db, group.name)
    if naming:
        raise GroupError(
            f"group {group.name!r} is named in allowed_groups of client(s) {', '.join(naming)}: "
            "take it out of the clients file and sync it first"
        )
    members = db.scalar(select(func.count()).select_from(GroupMember).where(GroupMember.group_id == group.id))
    db.execute(delete(GroupMember).where(GroupMember.group_id == group.id))
    db.delete(group)
    record_audit(db, "group.removed", group=group.name, members=int(members or 0))


def list_groups(db: Session) -> list[GroupInfo]:
    return [_info(db, group) for group in db.scalars(select(Group).order_by(Group.name))]


def show_group(db: Session, raw_name: str) -> GroupInfo:
    return _info(db, _group(db, raw_name))


def add_members(db: Session, raw_name: str, usernames: Sequence[str]) -> tuple[str, ...]:
    """Adds each user (all or none: an unknown username changes nothing); returns those who
    were not members yet."""
    group = _group(db, raw_name)
    users = _users(db, usernames)
    present = set(db.scalars(select(GroupMember.user_id).where(GroupMember.group_id == group.id)))
    added = []
    for user in users:
        if user.id not in present:
            db.add(GroupMember(group_id=group.id, user_id=user.id))
            present.add(user.id)
            added.append(user.username)
            record_audit(db, "group.member_added", user_id=user.id, group=group.name)
    return tuple(added)


def remove_members(db: Session, raw_name: str, usernames: Sequence[str]) -> MemberRemoval:
    """Takes each user out (all or none). For every app whose allowed_groups the user no
    longer meets: their tokens there are revoked and their sessions there logged out."""
    group = _group(db, raw_name)
    users = _users(db, usernames)
    requiring = clients_requiring(db, group.name)
    allowed = {client_id: set(groups) for client_id, groups in _allowed_groups_by_client(db).items()}
    removed, withdrawn, ended = [], [], []
    for user in users:
        gone = db.execute(
            delete(GroupMember).where(GroupMember.group_id == group.id, GroupMember.user_id == user.id)
        ).rowcount
        if not gone:
            continue
        removed.append(user.username)
        record_audit(db, "group.member_removed", user_id=user.id, group=group.name)
        still_in = {m.name for m in memberships_of(db, user.id)}
        for client_id in requiring:
            if allowed[client_id] & still_in:
                continue  # another of the app's groups still lets them in
            ended.extend(_withdraw(db, user, client_id, reason="removed_from_group", group=group.name))
            withdrawn.append((user.username, client_id))
    return MemberRemoval(tuple(removed), tuple(withdrawn), tuple(ended))


def withdraw_where_no_longer_allowed(
    db: Session, client_id: str, allowed_groups: Collection[str]
) -> tuple[list[str], list[EndedSession]]:
    """A client whose allowed_groups a clients file just narrowed (or set): every user who
    holds something there (a live grant, a session signed in there) and is no longer in any
    of its groups loses it at once, as a removal from a group would do; returns their
    usernames and the RP sessions to send back-channel logouts to."""
    now = clock_of(db).now()
    holders = (
        select(RefreshToken.user_id)
        .where(RefreshToken.client_id == client_id, RefreshToken.revoked_at.is_(None))
        .union(
            select(AccessToken.user_id).where(
                AccessToken.client_id == client_id,
                AccessToken.revoked_at.is_(None),
                AccessToken.expires_at > now,
                AccessToken.user_id.is_not(None),
            ),
            select(IdpSession.user_id)
            .join(SessionClient, SessionClient.session_id == IdpSession.id)
            .where(SessionClient.client_id == client_id, IdpSession.ended_at.is_(None)),
            # a JWT access token leaves no row: whoever redeemed a code here lately may hold one
            select(AuthorizationCode.user_id).where(
                AuthorizationCode.client_id == client_id,
                AuthorizationCode.used_at > now - timedelta(seconds=JWT_ACCESS_MAX_SECONDS),
            ),
        )
    )
    usernames, ended = [], []
    for user in db.scalars(select(User).where(User.id.in_(holders)).order_by(User.username)):
        if may_use(allowed_groups, (m.name for m in memberships_of(db, user.id))):
            continue
        ended.extend(_withdraw(db, user, client_id, reason="allowed_groups_narrowed"))
        usernames.append(user.username)
    return usernames, ended


def _withdraw(db: Session, user: User, client_id: str, *, reason: str, **detail: object) -> list[EndedSession]:
    revoke_user_grants_at_client(db, user.id, client_id)
    record_audit(
        db, "access.withdrawn", user_id=user.id, client_id=client_id, outcome="success", reason=reason, **detail
    )
    return _end_rp_sessions(db, user, client_id)


def clients_requiring(db: Session, name: str) -> tuple[str, ...]:
    """The clients whose allowed_groups name this group."""
    return tuple(sorted(cid for cid, groups in _allowed_groups_by_client(db).items() if name in groups))


def known_group_names(db: Session) -> frozenset[str]:
    return frozenset(db.scalars(select(Group.name)))


def strictest(memberships: Iterable[Membership]) -> str | None:
    """The highest minimum among the groups (None when none sets one)."""
    levels = [m.min_acr for m in memberships if m.min_acr in LEVELS]
    return max(levels, key=LEVELS.__getitem__) if levels else None


# ---- inside ----------------------------------------------------------------------------


def _allowed_groups_by_client(db: Session) -> dict[str, tuple[str, ...]]:
    found = {}
    for client_id, config in db.execute(select(Client.client_id, Client.config)):
        groups = (config or {}).get("allowed_groups")
        if groups:
            found[client_id] = tuple(groups)
    return found


def _end_rp_sessions(db: Session, user: User, client_id: str) -> list[EndedSession]:
    """The user's live sessions that signed in to this app: each is no longer signed in
    there (so a later logout does not notify it again), and gets a back-channel logout."""
    rows = db.execute(
        select(SessionClient.id, IdpSession.sid)
        .join(IdpSession, IdpSession.id == SessionClient.session_id)
        .where(
            IdpSession.user_id == user.id,
            IdpSession.ended_at.is_(None),
            SessionClient.client_id == client_id,
        )
    ).all()
    if rows:
        db.execute(delete(SessionClient).where(SessionClient.id.in_([row.id for row in rows])))
    return [EndedSession(user_id=user.id, sid=row.sid, subject=user.subject, clients=(client_id,)) for row in rows]


def _group(db: Session, raw_name: str) -> Group:
    name = group_name(raw_name)
    group = db.scalar(select(Group).where(Group.name == name))
    if group is None:
        raise GroupError(f"no group named {name!r}")
    return group


def _users(db: Session, usernames: Sequence[str]) -> list[User]:
    if not usernames:
        raise GroupError("name at least one user")
    users = []
    for raw in dict.fromkeys(usernames):
        user = db.scalar(select(User).where(User.username == normalize_username(raw)))
        if user is None or user.deleted_at is not None:  # a deleted user's tombstone joins nothing
            raise GroupError(f"no user named {raw!r}")
        users.append(user)
    return users


def _info(db: Session, group: Group) -> GroupInfo:
    members = tuple(
        db.scalars(
            select(User.username)
            .join(GroupMember, GroupMember.user_id == User.id)
            .where(GroupMember.group_id == group.id)
            .order_by(User.username)
        )
    )
    return GroupInfo(group.name, group.display_name, group.min_acr, members, clients_requiring(db, group.name))


def _display_name(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    if len(value) > _MAX_DISPLAY_NAME or any(ord(c) < 0x20 for c in value):
        raise GroupError(f"the display name must be at most {_MAX_DISPLAY_NAME} printable characters")
    return value.strip()


def _min_acr(value: str | None) -> str | None:
    if value is None:
        return None
    if value not in MIN_ACR_VALUES:
        raise GroupError(f"--min-acr must be one of {', '.join(MIN_ACR_VALUES)} or none, not {value!r}")
    return value
