"""A message from templates/mail/<name>.txt and <name>.html (Jinja2; HTML autoescaped):
plain text with an HTML alternative, to one recipient. Headers are built by the email
package's SMTP policy from checked values: no user's name or address can add a header."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid, parseaddr
from typing import TYPE_CHECKING

from idp.resources import resource_dir

if TYPE_CHECKING:
    from jinja2 import Environment

NAME_MAX = 100


class InvalidRecipient(ValueError):
    """The address on file cannot be written into a header (never quoted: it may be anything)."""


@dataclass(frozen=True)
class Recipient:
    address: str
    display_name: str  # control characters (CR, LF, …) already gone

    @classmethod
    def of(cls, address: str, name: str | None) -> Recipient:
        if not address.isascii() or not address.isprintable() or " " in address:
            raise InvalidRecipient("not a plain ASCII address")
        try:
            parsed = Address(addr_spec=address)
        except (ValueError, IndexError, HeaderParseError):
            raise InvalidRecipient("not an address") from None
        if not parsed.username or not parsed.domain:
            raise InvalidRecipient("not an address")
        return cls(parsed.addr_spec, clean_display_name(name))


def clean_display_name(name: str | None) -> str:
    """One line of printable text: any control character becomes a space."""
    text = "".join(ch if ch.isprintable() else " " for ch in name or "")
    return " ".join(text.split())[:NAME_MAX]


class Composer:
    """Renders templates/mail/ into messages from one sender."""

    def __init__(self, from_header: str, *, issuer: str) -> None:
        self.from_header = from_header
        self.issuer = issuer

    @functools.cached_property
    def _env(self) -> Environment:
        # made by the first message: Jinja2 stays out of a worker that never mails (idle RSS)
        from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

        return Environment(
            loader=FileSystemLoader(resource_dir("templates") / "mail"),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
            undefined=StrictUndefined,  # a missing fact is a bug, not an empty line in a mail
            keep_trailing_newline=True,
        )

    def compose(
        self, template: str, subject: str, to: Recipient, facts: Mapping[str, object], *, now: datetime
    ) -> EmailMessage:
        context = {
            **facts,
            "name": to.display_name,
            "issuer": self.issuer,
            "account_url": f"{self.issuer}/account",
            "subject": subject,
        }
        message = EmailMessage(policy=SMTP)
        message["From"] = self.from_header
        message["To"] = Address(display_name=to.display_name, addr_spec=to.address)
        message["Subject"] = subject
        message["Date"] = format_datetime(now)
        message["Message-ID"] = make_msgid(domain=parseaddr(self.from_header)[1].rpartition("@")[2] or None)
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to it
        message.set_content(self._env.get_template(f"{template}.txt").render(context))
        message.add_alternative(self._env.get_template(f"{template}.html").render(context), subtype="html")
        return message
