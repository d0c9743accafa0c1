"""idp/users.py against both databases: a verified address belongs to one user, and the
database's unique index has the last word when two commands verify one address at once."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from idp.db.engine import make_engine, make_sessionmaker
from idp.db.models import User
from idp.users import UserChanges, UserError, add_user, update_user
from tests.support.clock import ManualClock


@pytest.fixture
def sessions(database_url: str, clock: ManualClock):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url)
    yield make_sessionmaker(engine, clock)
    engine.dispose()


def test_the_unique_index_stops_a_verification_the_checks_did_not_see(sessions) -> None:  # type: ignore[no-untyped-def]
    # add_user alone does not look for other users (check_new_user does, before it): what a
    # second command racing past that check would do
    with sessions.begin() as db:
        add_user(db, username="alice", email="alice@example.com", name=None, password_hash=None, email_verified=True)

    refused = r"^--email-verified: Alice@Example\.com is already verified for another user$"
    with pytest.raises(UserError, match=refused), sessions.begin() as db:
        add_user(db, username="bob", email="Alice@Example.com", name=None, password_hash=None, email_verified=True)

    with sessions() as db:
        assert db.scalars(select(User.username)).all() == ["alice"]


def test_verifying_an_address_another_user_verified_is_refused_without_naming_them(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as db:
        add_user(db, username="alice", email="alice@example.com", name=None, password_hash=None, email_verified=True)
        add_user(db, username="bob", email="ALICE@example.com", name=None, password_hash=None)

    with pytest.raises(UserError) as refused, sessions.begin() as db:
        update_user(db, "bob", UserChanges(email_verified=True))

    assert str(refused.value) == "--email-verified: ALICE@example.com is already verified for another user"
    with sessions() as db:
        assert db.scalar(select(User.email_verified).where(User.username == "bob")) is False


def test_a_verified_address_becomes_free_when_its_user_changes_address(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as db:
        add_user(db, username="alice", email="alice@example.com", name=None, password_hash=None, email_verified=True)
        add_user(db, username="bob", email="alice@example.com", name=None, password_hash=None)
    with sessions.begin() as db:
        assert update_user(db, "alice", UserChanges(email="alice@new.example")) == ["email", "email_verified"]

    with sessions.begin() as db:
        assert update_user(db, "bob", UserChanges(email_verified=True)) == ["email_verified"]
