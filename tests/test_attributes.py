"""A user's attributes (`idp user set U --attr NAME=VALUE`, issue 17): OIDC Core §5.1 profile
and phone claims validated as that section describes them, custom claims, bounded names
and values, reserved names refused; one transaction, audited by name, never by value."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from idp.attributes import (
    MAX_ATTRIBUTES,
    AttributeRejected,
    apply_changes,
    check_value,
    parse_assignment,
)
from idp.db.engine import make_engine, make_sessionmaker
from idp.db.models import AuditEvent, User
from idp.users import UserChanges, UserError, add_user, update_user
from tests.support.clock import ManualClock


def case(id: str, *values: object) -> object:
    return pytest.param(*values, id=id)


# --- accepted values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "stored"),
    [
        case("a given name", "given_name", "Zoë", "Zoë"),
        case("a family name with spaces inside", "family_name", "van der Berg", "van der Berg"),
        case("a nickname", "nickname", "Z", "Z"),
        case("an https picture", "picture", "https://cdn.example/a.png", "https://cdn.example/a.png"),
        case("an https website", "website", "https://zoe.example/", "https://zoe.example/"),
        case("a language", "locale", "fr", "fr"),
        case("a language and region", "locale", "en-US", "en-US"),
        case("a language, script and region", "locale", "zh-Hant-TW", "zh-Hant-TW"),
        case("a UN M.49 region", "locale", "es-419", "es-419"),
        case("an IANA zone", "zoneinfo", "Europe/Paris", "Europe/Paris"),
        case("an E.164 number", "phone_number", "+14155550100", "+14155550100"),
        case("a verified number", "phone_number_verified", "yes", True),
        case("an unverified number", "phone_number_verified", "no", False),
        case("a full birthdate", "birthdate", "1990-02-28", "1990-02-28"),
        case("a birthdate with the year withheld", "birthdate", "0000-02-29", "0000-02-29"),
        case("a birth year", "birthdate", "1990", "1990"),
        case("a custom claim", "department", "R&D <lab>", "R&D <lab>"),
        case("a value of exactly 1024 characters", "department", "d" * 1024, "d" * 1024),
    ],
)
def test_valid_values_are_stored(name: str, raw: str, stored: object) -> None:
    assert check_value(name, raw) == stored


# --- refused names and values: every case ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "problem"),
    [
        # names
        case("sub", "sub", "x", "--attr 'sub': reserved: a registered JWT/OpenID Connect claim"),
        case("iss", "iss", "x", "--attr 'iss': reserved"),
        case("aud", "aud", "x", "--attr 'aud': reserved"),
        case("exp", "exp", "1", "--attr 'exp': reserved"),
        case("nonce", "nonce", "x", "--attr 'nonce': reserved"),
        case("acr", "acr", "mfa", "--attr 'acr': reserved"),
        case("sid", "sid", "x", "--attr 'sid': reserved"),
        case("cnf", "cnf", "x", "--attr 'cnf': reserved"),
        case("email, set with --email", "email", "a@b.example", "--attr 'email': reserved: set it with --email"),
        case("email_verified", "email_verified", "yes", "reserved: set it with --email-verified"),
        case("name, set with --name", "name", "Zoë", "--attr 'name': reserved: set it with --name"),
        case("preferred_username", "preferred_username", "z", "reserved: it is the username"),
        case("groups", "groups", "admins", "--attr 'groups': reserved"),
        case("updated_at", "updated_at", "0", "--attr 'updated_at': reserved"),
        case("address, not offered", "address", "1 Main St", "address is a structured claim idp does not offer"),
        case("a name longer than 64", "d" * 65, "x", "names are at most 64 characters"),
        case("a name with capitals", "Department", "x", "names are a-z 0-9 _, starting with a letter"),
        case("a name with a dash", "cost-centre", "x", "names are a-z 0-9 _"),
        case("a name starting with a digit", "1st", "x", "names are a-z 0-9 _"),
        case("a name starting with _", "_claim_names", "x", "names are a-z 0-9 _"),
        case("an empty name", "", "x", "names are a-z 0-9 _"),
        # values
        case(
            "a value longer than 1024",
            "department",
            "d" * 1025,
            "--attr department: values are at most 1024 characters",
        ),
        case("a newline", "nickname", "a\nb", "--attr nickname: must not contain control characters"),
        case("a NUL", "department", "a\x00b", "must not contain control characters"),
        case("leading spaces", "given_name", " Zoë", "must not start or end with spaces"),
        case("an http picture", "picture", "http://cdn.example/a.png", "--attr picture: must be an https URL"),
        case("a picture without a host", "picture", "https:///a.png", "must be an https URL"),
        case("a javascript picture", "picture", "javascript:alert(1)", "must be an https URL"),
        case("a picture with user@", "picture", "https://u@cdn.example/a.png", "must not contain user@"),
        case("a picture with spaces", "picture", "https://cdn.example/a b.png", "without spaces"),
        case("a picture with a bad port", "picture", "https://cdn.example:x/a.png", "not a URL"),
        case("an http website", "website", "http://zoe.example/", "--attr website: must be an https URL"),
        case("a locale with an underscore", "locale", "en_US", "--attr locale: must be a BCP 47 language tag"),
        case("a locale that is a word", "locale", "english", "must be a BCP 47 language tag"),
        case("a locale with a bad region", "locale", "en-USA", "must be a BCP 47 language tag"),
        case("an unknown zone", "zoneinfo", "Mars/Olympus_Mons", "--attr zoneinfo: must be an IANA time zone"),
        case("a zone offset", "zoneinfo", "+02:00", "must be an IANA time zone"),
        case("a number without +", "phone_number", "14155550100", "--attr phone_number: must be an E.164 number"),
        case("a number with spaces", "phone_number", "+1 415 555 0100", "must be an E.164 number"),
        case("a number of 16 digits", "phone_number", "+1234567890123456", "must be an E.164 number"),
        case("a number starting with 0", "phone_number", "+0123456", "must be an E.164 number"),
        case("an extension", "phone_number", "+14155550100;ext=5", "must be an E.164 number"),
        case("verified as true", "phone_number_verified", "true", "--attr phone_number_verified: must be yes or no"),
        case("a birthdate that is no date", "birthdate", "1990-02-30", "--attr birthdate: not a date"),
        case("a birthdate in another order", "birthdate", "28/02/1990", "must be YYYY-MM-DD"),
        case("the year 0000 alone", "birthdate", "0000", "the year 0000 means withheld"),
    ],
)
def test_bad_names_and_values_are_refused_with_the_attribute_named(name: str, raw: str, problem: str) -> None:
    with pytest.raises(AttributeRejected) as refused:
        apply_changes({}, [(name, raw)])
    assert problem in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        case("a value", "department=R&D", ("department", "R&D")),
        case("a value holding =", "department=a=b", ("department", "a=b")),
        case("an empty value removes", "department=", ("department", "")),
    ],
)
def test_assignments_are_name_equals_value(text: str, expected: tuple[str, str]) -> None:
    assert parse_assignment(text) == expected


def test_an_assignment_without_equals_is_refused() -> None:
    with pytest.raises(AttributeRejected, match="write NAME=VALUE"):
        parse_assignment("department")


# --- changes as a whole -------------------------------------------------------------------------


def test_an_empty_value_removes_the_attribute() -> None:
    assert apply_changes({"department": "R&D", "nickname": "Z"}, [("department", "")]) == {"nickname": "Z"}


def test_a_new_phone_number_is_unverified_unless_verified_in_the_same_change() -> None:
    verified = {"phone_number": "+14155550100", "phone_number_verified": True}
    assert apply_changes(verified, [("phone_number", "+14155550199")]) == {"phone_number": "+14155550199"}
    assert apply_changes(verified, [("phone_number", "+14155550199"), ("phone_number_verified", "yes")]) == {
        "phone_number": "+14155550199",
        "phone_number_verified": True,
    }
    assert apply_changes(verified, [("nickname", "Z")])["phone_number_verified"] is True


def test_verifying_a_number_the_user_does_not_have_is_refused() -> None:
    with pytest.raises(AttributeRejected, match="no phone_number"):
        apply_changes({}, [("phone_number_verified", "yes")])


def test_removing_the_number_removes_its_verification() -> None:
    verified = {"phone_number": "+14155550100", "phone_number_verified": True}
    assert apply_changes(verified, [("phone_number", "")]) == {}


def test_a_user_has_at_most_50_attributes() -> None:
    full = {f"a{i}": "x" for i in range(MAX_ATTRIBUTES)}
    assert apply_changes(full, [("a0", "y")])["a0"] == "y"  # changing one of them is fine
    with pytest.raises(AttributeRejected, match="at most 50 attributes"):
        apply_changes(full, [("one_more", "x")])


# --- against both databases: one transaction, audited by name ---------------------------------


@pytest.fixture
def sessions(database_url: str, clock: ManualClock):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url)
    yield make_sessionmaker(engine, clock)
    engine.dispose()


def attributes_of(sessions, username: str = "zoe") -> dict[str, object] | None:  # type: ignore[no-untyped-def]
    with sessions() as db:
        return db.scalar(select(User.attributes).where(User.username == username))


def test_attributes_are_set_in_one_change_and_audited_by_name_only(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as db:
        add_user(db, username="zoe", email=None, name=None, password_hash=None)
    changes = UserChanges(
        attributes=(("given_name", "Zoë"), ("phone_number", "+14155550100"), ("phone_number_verified", "yes"))
    )
    with sessions.begin() as db:
        changed = update_user(db, "zoe", changes)

    assert changed == ["attr:given_name", "attr:phone_number", "attr:phone_number_verified"]
    assert attributes_of(sessions) == {
        "given_name": "Zoë",
        "phone_number": "+14155550100",
        "phone_number_verified": True,
    }
    with sessions() as db:
        event = db.scalars(select(AuditEvent).where(AuditEvent.kind == "user.updated")).one()
    detail = event.detail
    assert detail["attributes_changed"] == ["given_name", "phone_number", "phone_number_verified"]
    assert "+14155550100" not in json.dumps(detail) and "Zoë" not in json.dumps(detail)


def test_one_bad_attribute_changes_nothing(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as db:
        add_user(db, username="zoe", email=None, name="Zoe", password_hash=None)
    with sessions.begin() as db:
        update_user(db, "zoe", UserChanges(attributes=(("nickname", "Z"),)))

    with pytest.raises(UserError, match="--attr locale"), sessions.begin() as db:
        update_user(db, "zoe", UserChanges(name="Zoë", attributes=(("nickname", "Zed"), ("locale", "english"))))

    assert attributes_of(sessions) == {"nickname": "Z"}
    with sessions() as db:
        assert db.scalar(select(User.name).where(User.username == "zoe")) == "Zoe"


def test_setting_the_same_values_again_changes_nothing(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as db:
        add_user(db, username="zoe", email=None, name=None, password_hash=None)
        update_user(db, "zoe", UserChanges(attributes=(("nickname", "Z"),)))
    with sessions.begin() as db:
        assert update_user(db, "zoe", UserChanges(attributes=(("nickname", "Z"), ("department", "")))) == []


def test_removing_the_last_attribute_leaves_none(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as db:
        add_user(db, username="zoe", email=None, name=None, password_hash=None)
        update_user(db, "zoe", UserChanges(attributes=(("nickname", "Z"),)))
    with sessions.begin() as db:
        assert update_user(db, "zoe", UserChanges(attributes=(("nickname", ""),))) == ["attr:nickname"]
    assert attributes_of(sessions) is None
