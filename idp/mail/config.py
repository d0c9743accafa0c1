"""Where mail goes and who it is from, parsed from IDP_SMTP_URL and IDP_MAIL_FROM. Pure:
idp/settings.py validates with these at start, idp/mail/smtp.py sends with the result.
Messages never quote the URL, which may hold a password."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.utils import getaddresses
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

Security = Literal["tls", "starttls", "none"]  # smtps://, smtp:// (STARTTLS required), smtp://…?starttls=off
DEFAULT_PORTS = {"smtps": 465, "smtp": 587}


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    security: Security
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """For the start-up line: the server and its security, never the credentials."""
        scheme = "smtps" if self.security == "tls" else "smtp"
        host = f"[{self.host}]" if ":" in self.host else self.host
        plain = "?starttls=off" if self.security == "none" else ""
        return f"{scheme}://{host}:{self.port}{plain}"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_smtp_url(url: str) -> SmtpTarget:
    """smtp[s]://[user[:password]@]host[:port][?starttls=off]; raises ValueError whose
    message names what is wrong (and never repeats the URL)."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError("must be an smtps:// or smtp:// URL")
    if not parts.hostname:
        raise ValueError("names no host")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ValueError("invalid port") from None
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError("must have no path or fragment")
    security = _security(parts.scheme, parts.query, parts.hostname)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return SmtpTarget(parts.hostname, port, security, username, password)


def _security(scheme: str, query: str, host: str) -> Security:
    options = dict(parse_qsl(query, keep_blank_values=True))
    if any(key != "starttls" for key in options) or options.get("starttls", "off") != "off":
        raise ValueError("the only option is ?starttls=off")
    if scheme == "smtps":
        if options:
            raise ValueError("?starttls=off is for smtp://, not smtps:// (TLS from the first byte)")
        return "tls"
    if not options:
        return "starttls"
    if not is_loopback(host):  # a password or a notice in clear text over a network: never
        raise ValueError("?starttls=off is allowed only for a loopback host (localhost, 127.0.0.1, ::1)")
    return "none"


def parse_mail_from(value: str) -> tuple[str, str]:
    """`idp@example.com` or `Example ID <idp@example.com>`: (the From header, the envelope
    address). Raises ValueError."""
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError("must be one line")
    found = getaddresses([value])
    if len(found) != 1:
        raise ValueError("must be one address")
    name, address = found[0]
    try:
        parsed = Address(display_name=name, addr_spec=address)
    except (ValueError, IndexError, HeaderParseError):
        raise ValueError(f"{value[:80]!r} is not an e-mail address") from None
    if not parsed.username or not parsed.domain or not address.isascii():
        raise ValueError(f"{value[:80]!r} is not an e-mail address")
    return str(parsed), parsed.addr_spec
