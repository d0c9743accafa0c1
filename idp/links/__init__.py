"""One-time links (issue 18): invitations, recovery, password reset and address
verification as one mechanism. records.py stores them; redeem.py says what a confirmed link
lets its browser do; forgot.py is the login page's "Forgot password?"; delivery.py mails
them. No HTTP and no protocol (idp/web/links.py translates)."""
