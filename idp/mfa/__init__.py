"""Second factors: TOTP authenticators and backup codes (the account pages enrol them,
the login chain's code step checks them, both through idp/mfa/codes.py)."""
