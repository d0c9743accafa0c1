"""The groups a user is in, as the chain's policy reads them: who may use which app
(a client's allowed_groups) and the least assurance of their sign-ins (a group's min_acr).
The admin side, and what changes them, is idp/groups.py."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from idp.db.models import Group, GroupMember

# Built once (SQLAlchemy reuses its compiled form): it runs on every login step and refresh
# of a client with allowed_groups.
_MEMBERSHIPS = (
    select(Group.name, Group.min_acr)
    .join(GroupMember, GroupMember.group_id == Group.id)
    .where(GroupMember.user_id == bindparam("user_id"))
    .order_by(Group.name)
)


@dataclass(frozen=True)
class Membership:
    """One group a user is in (policy.GroupPolicy)."""

    name: str
    min_acr: str | None


def memberships_of(db: Session, user_id: int) -> tuple[Membership, ...]:
    """One query: the user's groups with their minimum assurance, by name."""
    return tuple(Membership(row.name, row.min_acr) for row in db.execute(_MEMBERSHIPS, {"user_id": user_id}))
