"""Backup codes: ten XXXX-XXXX codes from the CSPRNG, shown once, stored as an Argon2id hash
each plus a keyed digest to find the one row a typed code can be (so an attempt costs one
Argon2 verification, never a loop over every code: the predecessor's CPU-burning flaw)."""

from __future__ import annotations

import re
import secrets

COUNT = 10
WARN_AT = 3  # the account page urges regeneration from this many left
# Crockford-like: no 0/O, 1/I/L, U: nothing to misread when copying from paper.
ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
_TYPED = re.compile(r"^[A-Z0-9]{4}-?[A-Z0-9]{4}$")


def generate() -> list[str]:
    codes: set[str] = set()
    while len(codes) < COUNT:
        raw = "".join(secrets.choice(ALPHABET) for _ in range(8))
        codes.add(f"{raw[:4]}-{raw[4:]}")
    return sorted(codes)


def normalize(raw: object) -> str | None:
    """Case-insensitive, with or without the dash, surrounding spaces ignored."""
    if not isinstance(raw, str) or len(raw) > 40:
        return None
    typed = raw.strip().upper().replace(" ", "")
    if not _TYPED.match(typed):
        return None
    plain = typed.replace("-", "")
    return f"{plain[:4]}-{plain[4:]}"


def lookup_input(user_id: int, code: str) -> str:
    """What the keyring digests into the stored lookup: owner and normalized code."""
    return f"backup-code:{user_id}:{code}"
