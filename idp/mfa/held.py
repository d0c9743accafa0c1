"""What second factors a user holds, as the login policy (idp/login/policy.py) and the
account pages need to know it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UserFactors:
    totp: bool = False  # a confirmed TOTP authenticator
    backup_codes: int = 0  # unused backup codes
    require_mfa: bool = False  # `idp user require-mfa`
    passkeys: int = 0  # registered passkeys
    password_must_change: bool = False  # `idp user set-password --must-change`: the chain sets a new one

    @property
    def has_second_factor(self) -> bool:
        return self.totp or self.passkeys > 0
