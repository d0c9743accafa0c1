"""E-mail (optional; everything works without it): notices of credential changes, built
from templates/mail/ (plain text and simple HTML), sent over SMTP with TLS by one
background thread per process, off the request path, with retries; each outcome audited
(mail.sent, mail.failed). No HTTP, no feature: idp/account says what happened and to whom."""
