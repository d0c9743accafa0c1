"""The password policy: NIST SP 800-63B-4 §3.1.1.2."""

from __future__ import annotations

from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from idp.security.password_policy import (
    MAX_LENGTH,
    MIN_LENGTH_SINGLE_FACTOR,
    MIN_LENGTH_WITH_SECOND_FACTOR,
    PasswordRejected,
    check_password,
    is_common_password,
)

ACCEPTED = None

CASES = [
    # length, single factor
    pytest.param("violet-harbor7", {}, "too_short", id="refuses 14 characters as the only factor"),
    pytest.param("violet-harbor7x", {}, ACCEPTED, id="accepts 15 characters as the only factor"),
    # length, with a second factor
    pytest.param("vi0let-h", {"has_second_factor": True}, ACCEPTED, id="accepts 8 characters with a second factor"),
    pytest.param("vi0let-", {"has_second_factor": True}, "too_short", id="refuses 7 characters with a second factor"),
    # upper bound
    pytest.param("Tr0ub4dor&3-" * 5 + "plum", {}, ACCEPTED, id="accepts 64 characters"),
    pytest.param("x7-Qm" * 25 + "abc", {}, ACCEPTED, id="accepts 128 characters"),
    pytest.param("x7-Qm" * 25 + "abcd", {}, "too_long", id="refuses 129 characters"),
    # blocklist (all three are really in idp/data/common-passwords.txt)
    pytest.param("passwordstandard", {}, "common", id="refuses a common 16-character password"),
    pytest.param("QwertyUIOP12345", {}, "common", id="refuses a common password whatever its case"),
    pytest.param(
        "iloveyou",
        {"has_second_factor": True},
        "common",
        id="refuses a common 8-character password with a second factor",
    ),
    # identifiers
    pytest.param(
        "my-name-is-ALICE-ok",
        {"username": "Alice"},
        "contains_identifier",
        id="refuses a password containing the username",
    ),
    pytest.param(
        "wonderland",
        {"username": "wonderland", "has_second_factor": True},
        "contains_identifier",
        id="refuses a password equal to the username",
    ),
    pytest.param(
        "J.Random-was-here-2024",
        {"email": "j.random@example.org"},
        "contains_identifier",
        id="refuses a password containing the email local part",
    ),
    pytest.param("example.org-is-my-home", {"email": "j.random@example.org"}, ACCEPTED, id="ignores the email domain"),
    pytest.param(
        "bobsleigh-champion", {"username": "bob"}, ACCEPTED, id="ignores a username shorter than 4 characters"
    ),
    # trivial patterns
    pytest.param("a" * 20, {}, "repeated_character", id="refuses one repeated character"),
    pytest.param("aAaAaAaAaAaAaAaA", {}, "repeated_character", id="refuses one repeated character in mixed case"),
    pytest.param("abcdefghijklmnop", {}, "sequence", id="refuses an ascending letter sequence"),
    pytest.param("ZYXWVUTSRQPONMLK", {}, "sequence", id="refuses a descending letter sequence"),
    pytest.param("987654321098765", {}, "sequence", id="refuses a descending digit sequence that wraps past zero"),
    pytest.param("1234567890123456", {}, "sequence", id="refuses an ascending digit sequence that wraps past nine"),
    # Unicode: NFKC first, then count code points
    pytest.param("cafe\u0301-au-lait-1", {}, "too_short", id="counts e + combining accent as one character after NFKC"),
    pytest.param("\ufb01refly-lantern", {}, ACCEPTED, id="counts the fi ligature as two characters after NFKC"),
    pytest.param("correct horse battery staple \U0001f40e", {}, ACCEPTED, id="accepts spaces and emoji"),
    pytest.param(
        "family \U0001f468\u200d\U0001f469\u200d\U0001f467 of three",
        {},
        ACCEPTED,
        id="accepts the zero-width joiner inside an emoji sequence",
    ),
    # control characters
    pytest.param("violet-harbor\t7x", {}, "control_character", id="refuses a tab"),
    pytest.param("violet-harbor\n7x", {}, "control_character", id="refuses a line break"),
    pytest.param("violet-harbor\x007x", {}, "control_character", id="refuses NUL"),
]


@pytest.mark.parametrize(("password", "context", "expected_rule"), CASES)
def test_password_policy(password: str, context: dict[str, object], expected_rule: str | None) -> None:
    if expected_rule is ACCEPTED:
        check_password(password, **context)  # type: ignore[arg-type]
        return
    with pytest.raises(PasswordRejected) as rejected:
        check_password(password, **context)  # type: ignore[arg-type]
    assert rejected.value.rule == expected_rule
    assert password not in rejected.value.reason
    assert password not in repr(rejected.value)


def test_limits_follow_nist_800_63b_4() -> None:
    assert (MIN_LENGTH_SINGLE_FACTOR, MIN_LENGTH_WITH_SECOND_FACTOR) == (15, 8)
    assert 64 <= MAX_LENGTH == 128


def test_rejection_reason_is_the_exception_message() -> None:
    with pytest.raises(PasswordRejected, match="at least 15 characters") as rejected:
        check_password("short")
    assert str(rejected.value) == rejected.value.reason
    assert isinstance(rejected.value, ValueError)


def test_rejection_survives_exception_machinery_that_sets_attributes() -> None:
    # A frozen-dataclass exception would raise FrozenInstanceError here.
    with pytest.raises(PasswordRejected) as rejected:
        check_password("short")
    rejected.value.add_note("context for logs")


def test_common_password_list_is_bundled_large_and_lowercase() -> None:
    text = resources.files("idp").joinpath("data/common-passwords.txt").read_text("utf-8")
    lines = text.splitlines()
    assert lines[0].startswith("# source:")
    entries = [line for line in lines if line and not line.startswith("#")]
    assert len(entries) >= 10_000
    assert all(entry == entry.lower() for entry in entries)


@pytest.mark.parametrize(
    ("password", "common"),
    [
        pytest.param("password", True, id="the classic"),
        pytest.param("PASSWORD", True, id="compared case-insensitively"),
        pytest.param("trustno1", True, id="a breached 8-character password"),
        pytest.param("violet-harbor7x", False, id="an uncommon password"),
        pytest.param("# source:", False, id="the file's comment lines are not entries"),
    ],
)
def test_is_common_password(password: str, common: bool) -> None:
    assert is_common_password(password) is common


@given(st.text(max_size=200))
def test_any_text_is_accepted_or_rejected_with_a_reason(password: str) -> None:
    try:
        check_password(password, username="someone", email="someone@example.org")
    except PasswordRejected as rejected:
        assert rejected.reason and rejected.rule
