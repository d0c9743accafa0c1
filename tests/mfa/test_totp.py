"""TOTP (RFC 6238, SHA-1, 6 digits, 30 s): the RFC's own test vectors, codes from an
independent implementation (Debian's oathtool), the ±1 step window, replay refusal, code
normalisation, and the otpauth URI and its QR code."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from idp.mfa import totp
from tests.conftest import unavailable

# RFC 6238 Appendix B: the SHA-1 seed is the ASCII string "12345678901234567890".
RFC_SECRET = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"


def test_rfc_secret_is_the_ascii_seed():
    import base64

    assert base64.b32decode(RFC_SECRET) == b"12345678901234567890"


# The RFC lists 8-digit codes; ours are 6 digits: the last 6 (the same truncation, mod 10^6).
@pytest.mark.parametrize(
    ("now", "rfc_code"),
    [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ],
    ids=lambda v: str(v),
)
def test_rfc6238_appendix_b_sha1_vectors(now, rfc_code):  # type: ignore[no-untyped-def]
    code = rfc_code[-6:]
    assert totp.matching_step(RFC_SECRET, code, now=now) == now // 30


def test_rfc_vector_digits_are_the_last_six():
    assert totp.matching_step(RFC_SECRET, "287082", now=59) == 1
    assert totp.matching_step(RFC_SECRET, "94287082", now=59) is None  # 8 digits are not our code


OATHTOOL_TIMES = [
    "2026-01-01 00:00:00 UTC",
    "2026-06-15 12:34:56 UTC",
    "2030-02-28 23:59:59 UTC",
    "1970-01-01 00:01:00 UTC",
]


@pytest.mark.parametrize("when", OATHTOOL_TIMES)
@pytest.mark.parametrize("secret", [RFC_SECRET, "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"])
def test_oathtool_codes_are_accepted(when, secret):  # type: ignore[no-untyped-def]
    oathtool = shutil.which("oathtool")
    if oathtool is None:
        unavailable("oathtool is not installed (Debian package oathtool)")
    out = subprocess.run(
        [oathtool, "--totp", "-b", secret, "--now", when], capture_output=True, text=True, check=True, timeout=10
    )
    code = out.stdout.strip()
    assert len(code) == 6 and code.isdigit()
    now = datetime.strptime(when, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC).timestamp()
    assert totp.matching_step(secret, code, now=now) == int(now) // 30


def test_new_secret_works_with_oathtool():
    oathtool = shutil.which("oathtool")
    if oathtool is None:
        unavailable("oathtool is not installed (Debian package oathtool)")
    secret = totp.new_secret()
    assert len(secret) == 32  # 160 bits of base32
    when = "2026-01-01 00:00:00 UTC"
    code = subprocess.run(
        [oathtool, "--totp", "-b", secret, "--now", when], capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert totp.matching_step(secret, code, now=now) == int(now) // 30


def test_new_secrets_differ():
    assert len({totp.new_secret() for _ in range(20)}) == 20


# ---- the window --------------------------------------------------------------------------

NOW = 1_767_225_600 + 15  # 2026-01-01T00:00:15Z, in the middle of its step
STEP = NOW // 30


def code_at(step: int, secret: str = RFC_SECRET) -> str:
    import pyotp

    return pyotp.TOTP(secret, digits=6, interval=30).at(step * 30)


def test_window_codes_are_distinct():
    """Guards the tests below against a coincidence of this fixed secret and time."""
    codes = [code_at(STEP + d) for d in range(-3, 4)]
    assert len(set(codes)) == len(codes)


@pytest.mark.parametrize("delta", [-1, 0, 1], ids=["previous", "current", "next"])
def test_one_step_either_way_is_accepted(delta):  # type: ignore[no-untyped-def]
    assert totp.matching_step(RFC_SECRET, code_at(STEP + delta), now=NOW) == STEP + delta


@pytest.mark.parametrize("delta", [-3, -2, 2, 3], ids=["minus3", "minus2", "plus2", "plus3"])
def test_two_steps_or_more_away_is_refused(delta):  # type: ignore[no-untyped-def]
    assert totp.matching_step(RFC_SECRET, code_at(STEP + delta), now=NOW) is None


def test_window_edges_within_a_step():
    first_second, last_second = STEP * 30, STEP * 30 + 29
    for now in (first_second, last_second):
        assert totp.matching_step(RFC_SECRET, code_at(STEP + 1), now=now) == STEP + 1
        assert totp.matching_step(RFC_SECRET, code_at(STEP - 1), now=now) == STEP - 1
        assert totp.matching_step(RFC_SECRET, code_at(STEP + 2), now=now) is None


def test_wrong_code_is_refused():
    window = {code_at(STEP + d) for d in (-1, 0, 1)}
    wrong = next(c for c in ("000000", "111111", "222222", "123456") if c not in window)
    assert totp.matching_step(RFC_SECRET, wrong, now=NOW) is None


def test_other_secret_is_refused():
    other = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    assert totp.matching_step(other, code_at(STEP), now=NOW) is None


# ---- replay ------------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [-1, 0, 1], ids=["previous", "current", "next"])
def test_replay_refused_when_last_used_step_is_at_or_after(delta):  # type: ignore[no-untyped-def]
    step = STEP + delta
    code = code_at(step)
    assert totp.matching_step(RFC_SECRET, code, now=NOW, last_used_step=step) is None
    assert totp.matching_step(RFC_SECRET, code, now=NOW, last_used_step=step + 1) is None
    assert totp.matching_step(RFC_SECRET, code, now=NOW, last_used_step=step + 5) is None


@pytest.mark.parametrize("delta", [-1, 0, 1], ids=["previous", "current", "next"])
def test_accepted_when_last_used_step_is_the_one_before(delta):  # type: ignore[no-untyped-def]
    step = STEP + delta
    assert totp.matching_step(RFC_SECRET, code_at(step), now=NOW, last_used_step=step - 1) == step
    assert totp.matching_step(RFC_SECRET, code_at(step), now=NOW, last_used_step=None) == step


def test_replay_of_the_rfc_vector():
    assert totp.matching_step(RFC_SECRET, "287082", now=59, last_used_step=0) == 1
    assert totp.matching_step(RFC_SECRET, "287082", now=59, last_used_step=1) is None


# ---- normalisation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("123456", "123456"),
        ("123 456", "123456"),
        ("123-456", "123456"),
        (" 123456 ", "123456"),
        ("12 34 56", "123456"),
        ("123\t456\n", "123456"),
        ("000000", "000000"),
    ],
    ids=["plain", "space", "dash", "surrounding-spaces", "pairs", "tab-newline", "zeros"],
)
def test_normalize_code_accepts(raw, expected):  # type: ignore[no-untyped-def]
    assert totp.normalize_code(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "12345",
        "1234567",
        "abcdef",
        "12345a",
        "",
        "   ",
        None,
        123456,
        b"123456",
        "1" * 10_000,
        "123456" + " " * 100,
        "-" * 30 + "123456",
    ],
    ids=[
        "five",
        "seven",
        "letters",
        "letter",
        "empty",
        "blank",
        "none",
        "int",
        "bytes",
        "very-long",
        "long-padding",
        "long-dashes",
    ],
)
def test_normalize_code_refuses(raw):  # type: ignore[no-untyped-def]
    assert totp.normalize_code(raw) is None


@pytest.mark.parametrize(
    "raw", ["١٢٣٤٥٦", "１２３４５６", "۱۲۳۴۵۶"], ids=["arabic-indic", "fullwidth", "extended-arabic-indic"]
)
def test_normalize_code_never_passes_non_ascii_digits(raw):  # type: ignore[no-untyped-def]
    """Python's `\\d` matches every Unicode digit; such a "code" must be refused here, since
    matching_step compares with hmac.compare_digest, which raises TypeError on non-ASCII
    str (a 500 on the login code step instead of a counted failure). Refusing them, or
    mapping them to their ASCII digits, are both fine; passing them through is not."""
    code = totp.normalize_code(raw)
    assert code is None or (code.isascii() and code == "123456")


@pytest.mark.parametrize("raw", ["١٢٣٤٥٦", "１２３４５６"], ids=["arabic-indic", "fullwidth"])
def test_non_ascii_digits_never_reach_the_comparison(raw):  # type: ignore[no-untyped-def]
    code = totp.normalize_code(raw)
    if code is not None:
        totp.matching_step(RFC_SECRET, code, now=NOW)  # raises TypeError when not ASCII


# ---- provisioning ------------------------------------------------------------------------


def test_provisioning_uri_has_issuer_and_account():
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, account="alice", issuer="idp.example")
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth"
    assert parts.netloc == "totp"
    assert unquote(parts.path) == "/idp.example:alice"
    query = parse_qs(parts.query)
    assert query["issuer"] == ["idp.example"]
    assert query["secret"] == [secret]
    assert query.get("digits", ["6"]) == ["6"]
    assert query.get("period", ["30"]) == ["30"]
    assert query.get("algorithm", ["SHA1"]) == ["SHA1"]


def test_provisioning_uri_escapes_the_account():
    uri = totp.provisioning_uri(RFC_SECRET, account="alice smith@example.com", issuer="idp.example")
    assert " " not in uri
    assert unquote(urlsplit(uri).path) == "/idp.example:alice smith@example.com"


def test_qr_data_uri_is_svg():
    uri = totp.provisioning_uri(RFC_SECRET, account="alice", issuer="idp.example")
    data = totp.qr_data_uri(uri)
    assert data.startswith("data:image/svg+xml")
    assert "<script" not in unquote(data).lower()


def test_grouped():
    assert totp.grouped(RFC_SECRET) == "GEZD GNBV GY3T QOJQ GEZD GNBV GY3T QOJQ"
