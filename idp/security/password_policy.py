"""The one password policy for the CLI and every form: NIST SP 800-63B-4 §3.1.1.2.

Length and a blocklist, no composition rules; everything is judged on the NFKC form.
"""

from __future__ import annotations

import functools
import unicodedata
from importlib import resources

MIN_LENGTH_SINGLE_FACTOR = 15  # the password is the only factor
MIN_LENGTH_WITH_SECOND_FACTOR = 8
MAX_LENGTH = 128  # 63B asks to accept at least 64; the cap bounds what reaches Argon2
MIN_IDENTIFIER_LENGTH = 4  # shorter usernames ("bob") would refuse too many good passwords

# Cyclic so that "7890123…" and "xyzabc…" count as sequences too.
_SEQUENCE_ALPHABETS = ("0123456789", "abcdefghijklmnopqrstuvwxyz")
# Cc: tabs, newlines, NUL…; Cs: lone surrogates, which cannot even be encoded for hashing.
# Cf stays allowed: emoji sequences need the zero-width joiner.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs"})


class PasswordRejected(ValueError):
    """A password the policy refuses.

    `reason` is one user-facing sentence and `rule` a stable name for logs and tests;
    neither ever contains the password. (Not a frozen dataclass: the exception machinery,
    e.g. add_note() and contextlib, must be able to set attributes on it.)
    """

    def __init__(self, reason: str, *, rule: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rule = rule


def normalize_password(password: str) -> str:
    """NFKC, so the same password typed on different keyboards is the same string."""
    return unicodedata.normalize("NFKC", password)


def check_password(
    password: str,
    *,
    username: str | None = None,
    email: str | None = None,
    has_second_factor: bool = False,
) -> None:
    """Raise PasswordRejected with the first rule the password breaks."""
    normalized = normalize_password(password)
    _check_characters(normalized)
    _check_length(normalized, has_second_factor=has_second_factor)
    if is_common_password(normalized):
        raise PasswordRejected(
            "This password is on a list of common or breached passwords; choose another.",
            rule="common",
        )
    _check_identifiers(normalized, username=username, email=email)
    _check_trivial(normalized)


def is_common_password(password: str) -> bool:
    return _fold(normalize_password(password)) in _common_passwords()


def _check_characters(password: str) -> None:
    if any(unicodedata.category(char) in _REFUSED_CATEGORIES for char in password):
        raise PasswordRejected(
            "Passwords cannot contain control characters such as tabs or line breaks.",
            rule="control_character",
        )


def _check_length(password: str, *, has_second_factor: bool) -> None:
    minimum = MIN_LENGTH_WITH_SECOND_FACTOR if has_second_factor else MIN_LENGTH_SINGLE_FACTOR
    if len(password) < minimum:
        raise PasswordRejected(f"Use at least {minimum} characters.", rule="too_short")
    if len(password) > MAX_LENGTH:
        raise PasswordRejected(f"Use at most {MAX_LENGTH} characters.", rule="too_long")


def _check_identifiers(password: str, *, username: str | None, email: str | None) -> None:
    folded = _fold(password)
    for identifier in (username, _local_part(email)):
        folded_identifier = _fold(normalize_password(identifier or ""))
        if len(folded_identifier) >= MIN_IDENTIFIER_LENGTH and folded_identifier in folded:
            raise PasswordRejected(
                "Passwords cannot contain your username or email address.",
                rule="contains_identifier",
            )


def _local_part(email: str | None) -> str | None:
    if email is None:
        return None
    return email.rpartition("@")[0] or email


def _check_trivial(password: str) -> None:
    folded = _fold(password)
    if len(set(folded)) == 1:
        raise PasswordRejected("Passwords cannot be one character repeated.", rule="repeated_character")
    if _is_sequence(folded):
        raise PasswordRejected("Passwords cannot be a simple sequence such as abcdef or 123456.", rule="sequence")


def _is_sequence(folded: str) -> bool:
    for alphabet in _SEQUENCE_ALPHABETS:
        cycle = alphabet * (len(folded) // len(alphabet) + 2)
        if folded in cycle or folded in cycle[::-1]:
            return True
    return False


def _fold(text: str) -> str:
    return text.casefold()


@functools.cache
def _common_passwords() -> frozenset[str]:
    # Loaded on first use, not on import: the CLI's other commands never need it.
    text = resources.files("idp").joinpath("data/common-passwords.txt").read_text("utf-8")
    return frozenset(_fold(line) for line in text.splitlines() if line and not line.startswith("#"))
