"""The notices idp sends when a credential of an account changes (issue 18): each is one
pair of templates under templates/mail/ and one subject. A notice says what changed, when
and from which address, and where to look if it was not the user; it carries nothing the
user or an attacker typed (no passkey name, no User-Agent) and never a secret. Notices go
to the address on file, verified or not (it is the owner's); one-time links will go only
to a verified one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Notice:
    template: str  # templates/mail/<template>.txt and .html; the audit rows' `mail`
    subject: str


PASSKEY_ADDED = Notice("passkey_added", "A passkey was added to your account")
PASSKEY_REMOVED = Notice("passkey_removed", "A passkey was removed from your account")
TOTP_ENABLED = Notice("totp_enabled", "An authenticator app was turned on for your account")
TOTP_DISABLED = Notice("totp_disabled", "The authenticator app was turned off for your account")
BACKUP_CODES_REGENERATED = Notice("backup_codes_regenerated", "New backup codes were made for your account")
PASSWORD_CHANGED = Notice("password_changed", "Your password was changed")
ACCOUNT_RECOVERED = Notice("account_recovered", "Your account was recovered with a recovery link")
PASSWORD_RESET = Notice("password_reset", "Your password was reset")
# changes an administrator made with the `idp` command line
PASSWORD_SET_BY_ADMIN = Notice("password_set_by_admin", "An administrator set a new password for your account")
FACTORS_REMOVED_BY_ADMIN = Notice("factors_removed_by_admin", "An administrator removed your second factors")

ALL = (
    PASSKEY_ADDED,
    PASSKEY_REMOVED,
    TOTP_ENABLED,
    TOTP_DISABLED,
    BACKUP_CODES_REGENERATED,
    PASSWORD_CHANGED,
    ACCOUNT_RECOVERED,
    PASSWORD_RESET,
    PASSWORD_SET_BY_ADMIN,
    FACTORS_REMOVED_BY_ADMIN,
)
