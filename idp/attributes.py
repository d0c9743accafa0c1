"""A user's attributes (`idp user set U --attr NAME=VALUE`): the OIDC Core §5.1 profile and
phone claims idp does not derive itself, each validated as §5.1 describes it, and custom
claims, which only a scope declared in the clients file ([[scopes]]) releases.

Names are 1-64 characters of a-z 0-9 _ starting with a letter; values are at most 1024
characters without control characters; a user has at most 50 attributes. Claims idp fills
in itself or that the protocol defines (idp/scopes.py RESERVED_CLAIMS) are refused."""

from __future__ import annotations

import re
import unicodedata
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from functools import cache
from urllib.parse import urlsplit

from idp.scopes import PHONE_CLAIMS, PROFILE_CLAIMS, RESERVED_CLAIMS

MAX_NAME_CHARS = 64
MAX_VALUE_CHARS = 1024
MAX_ATTRIBUTES = 50
NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
# BCP 47 (RFC 5646 §2.1) language tags as OIDC Core §5.1 uses them ("en-US", "fr-CA",
# "zh-Hant-TW", "sr-Latn"): language, optional script, region and variants
_LOCALE = re.compile(
    r"[A-Za-z]{2,3}(?:-[A-Za-z]{4})?(?:-(?:[A-Za-z]{2}|[0-9]{3}))?(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*"
)
_MAX_LOCALE_CHARS = 35
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")  # ITU-T E.164: at most 15 digits, no leading 0
_BIRTHDATE = re.compile(r"([0-9]{4})(?:-([0-9]{2})-([0-9]{2}))?")
STANDARD_ATTRIBUTES = tuple(
    name for name in (*PROFILE_CLAIMS, *PHONE_CLAIMS) if name not in RESERVED_CLAIMS
)  # given_name … locale, phone_number, phone_number_verified
_NAMED_ELSEWHERE = {
    "name": "set it with --name",
    "email": "set it with --email",
    "email_verified": "set it with --email-verified",
    "preferred_username": "it is the username",
    "updated_at": "idp sets it when the user changes",
    "groups": "it lists the user's groups (idp group add-member)",
    "address": "address is a structured claim idp does not offer",
}

AttributeValue = str | bool


class AttributeRejected(ValueError):
    """An attribute cannot be set; the message is one line naming it."""


def name_problem(name: str) -> str | None:
    """Why `name` cannot be an attribute (None: it can)."""
    if len(name) > MAX_NAME_CHARS:
        return f"names are at most {MAX_NAME_CHARS} characters"
    if not NAME.fullmatch(name):
        return "names are a-z 0-9 _, starting with a letter"
    if name in _NAMED_ELSEWHERE:
        return f"reserved: {_NAMED_ELSEWHERE[name]}"
    if name in RESERVED_CLAIMS:
        return "reserved: a registered JWT/OpenID Connect claim"
    return None


def custom_claim_problem(name: str) -> str | None:
    """Why `name` cannot be a custom claim of a declared scope (None: it can)."""
    if name in STANDARD_ATTRIBUTES:
        scope = "phone" if name in PHONE_CLAIMS else "profile"
        return f"a standard claim, released by the {scope} scope"
    return name_problem(name)


def parse_assignment(text: str) -> tuple[str, str]:
    """`NAME=VALUE` as given on the command line; `NAME=` removes the attribute."""
    name, sign, value = text.partition("=")
    if not sign:
        raise AttributeRejected(f"--attr {_shown(text)}: write NAME=VALUE (NAME= removes it)")
    return name.strip(), value


def apply_changes(
    current: Mapping[str, AttributeValue] | None, changes: Sequence[tuple[str, str]]
) -> dict[str, AttributeValue]:
    """The attributes after `changes` ((name, value) pairs, "" removes), every one checked.
    A new phone number is unverified unless the same changes verify it."""
    result = dict(current or {})
    named = {name for name, _ in changes}
    for name, raw in changes:
        if problem := name_problem(name):
            raise AttributeRejected(f"--attr {_shown(name)}: {problem}")
        if raw == "":
            result.pop(name, None)
        else:
            result[name] = check_value(name, raw)
    if result.get("phone_number") != (current or {}).get("phone_number") and "phone_number_verified" not in named:
        result.pop("phone_number_verified", None)  # a different number is not the one that was verified
    if "phone_number_verified" in result and "phone_number" not in result:
        raise AttributeRejected("--attr phone_number_verified: the user has no phone_number")
    if len(result) > MAX_ATTRIBUTES:
        raise AttributeRejected(f"--attr: a user has at most {MAX_ATTRIBUTES} attributes")
    return result


def check_value(name: str, raw: str) -> AttributeValue:
    """The value to store for `name`; raises AttributeRejected naming the attribute."""
    if len(raw) > MAX_VALUE_CHARS:
        raise AttributeRejected(f"--attr {name}: values are at most {MAX_VALUE_CHARS} characters")
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in raw):
        raise AttributeRejected(f"--attr {name}: must not contain control characters")
    if raw != raw.strip():
        raise AttributeRejected(f"--attr {name}: must not start or end with spaces")
    check = _CHECKS.get(name)
    try:
        return raw if check is None else check(raw)
    except _Invalid as exc:
        raise AttributeRejected(f"--attr {name}: {exc} (got {_shown(raw)})") from None


# ---- OIDC Core §5.1, one check per claim ------------------------------------------------


class _Invalid(ValueError):
    """What is wrong with a value, for check_value to name the attribute."""


def _https_url(raw: str) -> AttributeValue:
    if any(char.isspace() or char == "\\" for char in raw):
        raise _Invalid("must be an https URL without spaces or backslashes")
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise _Invalid("not a URL") from None
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise _Invalid("must be an https URL (shown by relying parties to everyone)")
    if "@" in parts.netloc:
        raise _Invalid("must not contain user@")
    return raw


def _locale(raw: str) -> AttributeValue:
    if len(raw) > _MAX_LOCALE_CHARS or not _LOCALE.fullmatch(raw):
        raise _Invalid("must be a BCP 47 language tag such as en-US or fr-CA")
    return raw


def _zoneinfo(raw: str) -> AttributeValue:
    zones = _time_zones()
    if not zones:
        raise _Invalid("this host has no time zone database (install tzdata)")
    if raw not in zones:
        raise _Invalid("must be an IANA time zone such as Europe/Paris or America/Los_Angeles")
    return raw


def _phone_number(raw: str) -> AttributeValue:
    if not _E164.fullmatch(raw):
        raise _Invalid("must be an E.164 number: + then up to 15 digits, e.g. +14155550100")
    return raw


def _yes_no(raw: str) -> AttributeValue:
    if raw not in ("yes", "no"):
        raise _Invalid("must be yes or no")
    return raw == "yes"


def _birthdate(raw: str) -> AttributeValue:
    """YYYY-MM-DD, or 0000-MM-DD when the year is withheld, or YYYY alone (§5.1)."""
    found = _BIRTHDATE.fullmatch(raw)
    if not found:
        raise _Invalid("must be YYYY-MM-DD, 0000-MM-DD (year withheld) or YYYY")
    year, month, day = found.groups()
    if month is None:
        if year == "0000":
            raise _Invalid("the year 0000 means withheld: give month and day")
        return raw
    try:
        date(int(year) or 2000, int(month), int(day))  # 0000: any leap year admits 02-29
    except ValueError:
        raise _Invalid("not a date") from None
    return raw


@cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _shown(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


_CHECKS: dict[str, Callable[[str], AttributeValue]] = {
    "picture": _https_url,
    "profile": _https_url,
    "website": _https_url,
    "locale": _locale,
    "zoneinfo": _zoneinfo,
    "phone_number": _phone_number,
    "phone_number_verified": _yes_no,
    "birthdate": _birthdate,
}
