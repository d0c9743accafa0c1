"""A user's second factors in the database, and the one path every code check goes
through (login code step, set-up confirmation, enforced enrolment, disable, regenerate):
replay protection, the shared lockout counter, and nothing written on failure but the
failure count. Rate limits are applied by the web layer before any of this runs.

Argon2 never runs here: backup-code checks are split into `backup_code_hash` (find the one
candidate row), the caller's `await hashing.verify_async(...)`, and `use_backup_code` (claim
it), so the event loop never waits on a hash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, func, or_, select, update
from sqlalchemy.orm import Session

from idp.clock import clock_of
from idp.db.models import BackupCode, Passkey, TotpCredential, User
from idp.lockout import FailureRecord, Lockout
from idp.mfa import backup_codes, totp
from idp.mfa.held import UserFactors
from idp.security.keyring import DecryptionFailed, Keyring

log = logging.getLogger("idp.mfa")

_PURPOSE = "totp-secret"

_CLAIM_STEP = (
    update(TotpCredential)
    .where(
        TotpCredential.user_id == bindparam("owner"),
        TotpCredential.id == bindparam("credential_id"),
        or_(TotpCredential.last_used_step.is_(None), TotpCredential.last_used_step < bindparam("step")),
    )
    .values(last_used_step=bindparam("step"))
)
_CLAIM_BACKUP = (
    update(BackupCode)
    .where(BackupCode.id == bindparam("code_id"), BackupCode.used_at.is_(None))
    .values(used_at=bindparam("now"))
)


@dataclass(frozen=True)
class CodeCheck:
    ok: bool
    failure: FailureRecord | None = None  # when not ok: what the lockout counter says

    @staticmethod
    def passed() -> CodeCheck:
        return CodeCheck(True)


def _context(user_id: int) -> str:
    return f"user:{user_id}"


class SecondFactors:
    def __init__(self, keyring: Keyring, lockout: Lockout, *, issuer: str) -> None:
        self.keyring = keyring
        self.lockout = lockout
        self.issuer = issuer

    # ---- what a user has ---------------------------------------------------------------

    def factors_of(self, db: Session, user: User, *, count_backup_codes: bool = False) -> UserFactors:
        confirmed = (
            db.scalar(
                select(TotpCredential.id).where(
                    TotpCredential.user_id == user.id, TotpCredential.confirmed_at.is_not(None)
                )
            )
            is not None
        )
        left = self.backup_codes_left(db, user.id) if count_backup_codes else 0
        passkeys = int(db.scalar(select(func.count()).select_from(Passkey).where(Passkey.user_id == user.id)) or 0)
        return UserFactors(
            totp=confirmed,
            backup_codes=left,
            require_mfa=user.require_mfa,
            passkeys=passkeys,
            password_must_change=user.password_must_change and user.password_hash is not None,
        )

    def backup_codes_left(self, db: Session, user_id: int) -> int:
        return int(
            db.scalar(
                select(func.count())
                .select_from(BackupCode)
                .where(BackupCode.user_id == user_id, BackupCode.used_at.is_(None))
            )
            or 0
        )

    # ---- TOTP set-up -------------------------------------------------------------------

    def begin_totp(self, db: Session, user_id: int) -> str:
        """A new secret, stored encrypted and unusable until confirmed; a set-up begun again
        before confirmation replaces it. Refused (ValueError) when TOTP is already enabled."""
        existing = db.scalar(select(TotpCredential).where(TotpCredential.user_id == user_id))
        if existing is not None and existing.confirmed_at is not None:
            raise ValueError("TOTP is already enabled")
        secret = totp.new_secret()
        sealed = self.keyring.encrypt(_PURPOSE, secret.encode(), context=_context(user_id))
        if existing is None:
            db.add(TotpCredential(user_id=user_id, secret_encrypted=sealed))
        else:
            existing.secret_encrypted, existing.created_at, existing.last_used_step = sealed, clock_of(db).now(), None
        db.flush()
        return secret

    def pending_secret(self, db: Session, user_id: int) -> str | None:
        row = db.scalar(
            select(TotpCredential).where(TotpCredential.user_id == user_id, TotpCredential.confirmed_at.is_(None))
        )
        return None if row is None else self._secret(row)

    def provisioning(self, secret: str, username: str) -> tuple[str, str]:
        """(otpauth URI, QR code data: URI) for an authenticator app."""
        uri = totp.provisioning_uri(secret, account=username, issuer=self.issuer_label)
        return uri, totp.qr_data_uri(uri)

    @property
    def issuer_label(self) -> str:
        from urllib.parse import urlsplit

        return urlsplit(self.issuer).hostname or "idp"

    def confirm_totp(self, db: Session, user_id: int, raw_code: object) -> CodeCheck:
        """The first code enables the pending authenticator (through the one check path)."""
        row = db.scalar(
            select(TotpCredential).where(TotpCredential.user_id == user_id, TotpCredential.confirmed_at.is_(None))
        )
        check = self._check_totp_row(db, user_id, row, raw_code)
        if check.ok:
            assert row is not None
            row.confirmed_at = clock_of(db).now()
        return check

    def disable_totp(self, db: Session, user_id: int) -> None:
        """TOTP and its backup codes gone (passkeys stay)."""
        db.execute(delete(TotpCredential).where(TotpCredential.user_id == user_id))
        db.execute(delete(BackupCode).where(BackupCode.user_id == user_id))

    @staticmethod
    def remove_all(db: Session, user_id: int) -> None:
        """Every second factor gone: TOTP, backup codes and passkeys (`idp user reset-mfa`)."""
        db.execute(delete(TotpCredential).where(TotpCredential.user_id == user_id))
        db.execute(delete(BackupCode).where(BackupCode.user_id == user_id))
        db.execute(delete(Passkey).where(Passkey.user_id == user_id))

    # ---- the one check path ------------------------------------------------------------

    def check_totp(self, db: Session, user_id: int, raw_code: object) -> CodeCheck:
        """A code from the user's confirmed authenticator, accepted once per time step."""
        row = db.scalar(
            select(TotpCredential).where(TotpCredential.user_id == user_id, TotpCredential.confirmed_at.is_not(None))
        )
        return self._check_totp_row(db, user_id, row, raw_code)

    def _check_totp_row(self, db: Session, user_id: int, row: TotpCredential | None, raw_code: object) -> CodeCheck:
        if self.lockout.is_locked(db, user_id):
            return CodeCheck(False, FailureRecord(remaining=0, locked_now=False, was_locked=True))
        code = totp.normalize_code(raw_code)
        step = None
        if row is not None and code is not None:
            secret = self._secret_or_none(row)
            if secret is not None:
                step = totp.matching_step(secret, code, now=clock_of(db).time(), last_used_step=row.last_used_step)
        # the step is claimed by a conditional UPDATE: two requests with one code, one wins
        if (
            row is not None
            and step is not None
            and db.connection().execute(_CLAIM_STEP, {"owner": user_id, "credential_id": row.id, "step": step}).rowcount
            == 1
        ):
            row.last_used_step = step
            return CodeCheck.passed()
        return CodeCheck(False, self.lockout.record_failure(db, user_id))

    def backup_code_hash(self, db: Session, user_id: int, raw_code: object) -> tuple[int, str] | None:
        """(row id, Argon2 hash) of the one unused backup code the typed one can be, or None
        (the caller then runs a dummy verification, so both cost one Argon2)."""
        code = backup_codes.normalize(raw_code)
        if code is None:
            return None
        lookup = self.keyring.digest(backup_codes.lookup_input(user_id, code))
        row = db.execute(
            select(BackupCode.id, BackupCode.code_hash).where(
                BackupCode.user_id == user_id, BackupCode.lookup == lookup, BackupCode.used_at.is_(None)
            )
        ).first()
        return None if row is None else (row.id, row.code_hash)

    def use_backup_code(self, db: Session, user_id: int, code_id: int | None, verified: bool) -> CodeCheck:
        """After the caller's Argon2 verification: claim the code (single use) or count a failure."""
        if self.lockout.is_locked(db, user_id):
            return CodeCheck(False, FailureRecord(remaining=0, locked_now=False, was_locked=True))
        if verified and code_id is not None and self.claim_backup_code(db, code_id):
            return CodeCheck.passed()
        return CodeCheck(False, self.lockout.record_failure(db, user_id))

    # ---- the login chain's primitives: no lockout here (idp/login/flow.py counts) ------------

    def matching_totp(
        self, db: Session, user_id: int, raw_code: object, *, pending: bool = False
    ) -> tuple[int, int] | None:
        """(credential id, matched time step) when the code matches the user's confirmed
        authenticator (`pending`: the one being set up) and its step is unused; claims nothing."""
        confirmed = TotpCredential.confirmed_at.is_(None) if pending else TotpCredential.confirmed_at.is_not(None)
        row = db.scalar(select(TotpCredential).where(TotpCredential.user_id == user_id, confirmed))
        code = totp.normalize_code(raw_code)
        if row is None or code is None:
            return None
        secret = self._secret_or_none(row)
        if secret is None:
            return None
        step = totp.matching_step(secret, code, now=clock_of(db).time(), last_used_step=row.last_used_step)
        return None if step is None else (row.id, step)

    @staticmethod
    def claim_totp_step(db: Session, user_id: int, credential_id: int, step: int, *, confirm: bool = False) -> bool:
        """The matched step, claimed by a conditional UPDATE (two requests with one code: one
        wins); `confirm` enables a pending authenticator with it."""
        if (
            db.connection()
            .execute(_CLAIM_STEP, {"owner": user_id, "credential_id": credential_id, "step": step})
            .rowcount
            != 1
        ):
            return False
        if confirm:
            db.execute(
                update(TotpCredential).where(TotpCredential.id == credential_id).values(confirmed_at=clock_of(db).now())
            )
        db.expire_all()  # the ORM's copies of the row are stale after Core UPDATEs
        return True

    @staticmethod
    def claim_backup_code(db: Session, code_id: int) -> bool:
        return db.connection().execute(_CLAIM_BACKUP, {"code_id": code_id, "now": clock_of(db).now()}).rowcount == 1

    # ---- backup codes ------------------------------------------------------------------

    def replace_backup_codes(self, db: Session, user_id: int, hashed: list[tuple[str, str]]) -> None:
        """Stores new codes (code, Argon2 hash), replacing every old one, used or not."""
        db.execute(delete(BackupCode).where(BackupCode.user_id == user_id))
        for code, code_hash in hashed:
            db.add(
                BackupCode(
                    user_id=user_id,
                    code_hash=code_hash,
                    lookup=self.keyring.digest(backup_codes.lookup_input(user_id, code)),
                )
            )
        db.flush()

    def _secret_or_none(self, row: TotpCredential) -> str | None:
        """A row whose secret does not decrypt for its owner (tampered with, moved from
        another user, or sealed under another master key) refuses every code."""
        try:
            return self._secret(row)
        except DecryptionFailed:
            log.error("TOTP secret of user %s does not decrypt: every code is refused", row.user_id)
            return None

    def _secret(self, row: TotpCredential) -> str:
        return self.keyring.decrypt(_PURPOSE, row.secret_encrypted, context=_context(row.user_id)).decode()
