"""TOTP (RFC 6238, SHA-1, 6 digits, 30-second steps) with pyotp: secrets, the otpauth URI
and its QR code, and matching a code to a time step. pyotp's verify() only says yes or no;
replay protection needs the step that matched (DESIGN.md §5), so we find it ourselves,
comparing every step of the window in constant time."""

from __future__ import annotations

import hmac
import re

import pyotp

DIGITS = 6
PERIOD_SECONDS = 30
WINDOW_STEPS = 1  # ±1 step: 30 s of clock drift either way
_CODE = re.compile(r"[0-9]{6}")  # ASCII only: \d would pass other scripts' digits


def new_secret() -> str:
    """160 random bits, base32 (RFC 4226's recommended length)."""
    return pyotp.random_base32(length=32)


def normalize_code(raw: object) -> str | None:
    """The six digits typed, without the spaces and dashes people and apps put in them."""
    if not isinstance(raw, str) or len(raw) > 20:
        return None
    code = re.sub(r"[\s-]", "", raw)
    return code if _CODE.fullmatch(code) else None


def step_of(now: float) -> int:
    return int(now // PERIOD_SECONDS)


def matching_step(secret: str, code: str, *, now: float, last_used_step: int | None = None) -> int | None:
    """The time step within the window whose code this is, if it is later than the last
    step this authenticator was used at (a code is accepted once); else None."""
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=PERIOD_SECONDS)
    current = step_of(now)
    matched = None
    for step in range(current - WINDOW_STEPS, current + WINDOW_STEPS + 1):
        if hmac.compare_digest(totp.at(step * PERIOD_SECONDS), code):  # every step compared: no early exit
            matched = step
    if matched is None or (last_used_step is not None and matched <= last_used_step):
        return None
    return matched


def provisioning_uri(secret: str, *, account: str, issuer: str) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=PERIOD_SECONDS).provisioning_uri(name=account, issuer_name=issuer)


def qr_data_uri(uri: str) -> str:
    """The otpauth URI as an SVG QR code in a data: URI (the pages' CSP allows data: images,
    and nothing is fetched from elsewhere). segno is imported here, by the enrolment pages
    that draw one: a worker that never enrols keeps it out of memory."""
    import segno

    return segno.make(uri, error="m").svg_data_uri(scale=5, border=2)


def grouped(secret: str) -> str:
    """The secret in groups of four, as authenticator apps expect it typed."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
