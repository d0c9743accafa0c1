"""Sending one message over SMTP (stdlib smtplib): smtps:// is TLS from the first byte;
smtp:// must offer STARTTLS or nothing is sent (its ?starttls=off is allowed for loopback
only, idp/mail/config.py). The server's certificate is always verified (the system's CAs,
or IDP_SMTP_CA_FILE). Every socket operation has a timeout. A failure is a MailFailure
whose reason is a fixed word: SMTP replies quote addresses, so none is kept."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

from idp.mail.config import SmtpTarget

TIMEOUT_SECONDS = 10.0  # each connect, read and write


class MailFailure(Exception):
    """Not sent. `permanent`: the same message to the same server would fail again."""

    def __init__(self, reason: str, *, permanent: bool = False, smtp_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.smtp_code = smtp_code


class SmtpTransport:
    def __init__(self, target: SmtpTarget, *, ca_file: str = "", timeout_seconds: float = TIMEOUT_SECONDS) -> None:
        self.target = target
        self.timeout_seconds = timeout_seconds
        self._tls = ssl.create_default_context(cafile=ca_file or None)  # verifies the chain and the host name
        self._tls.minimum_version = ssl.TLSVersion.TLSv1_2

    def send(self, message: EmailMessage, *, envelope_from: str, to: str) -> None:
        try:
            with self._connect() as smtp:
                self._secure(smtp)
                if self.target.username:
                    smtp.login(self.target.username, self.target.password or "")
                smtp.send_message(message, from_addr=envelope_from, to_addrs=[to])
        except MailFailure:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise MailFailure("auth_failed", permanent=True, smtp_code=exc.smtp_code) from None
        except smtplib.SMTPNotSupportedError:  # a user name given, and the server offers no AUTH
            raise MailFailure("auth_unavailable", permanent=True) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise _refused(codes[0] if codes else None) from None
        except smtplib.SMTPResponseException as exc:  # sender refused, data refused, …
            raise _refused(exc.smtp_code) from None
        except ssl.SSLError:
            raise MailFailure("tls_failed") from None
        except TimeoutError:
            raise MailFailure("timeout") from None
        except (OSError, smtplib.SMTPException):  # refused, unreachable, the connection dropped
            raise MailFailure("connection_failed") from None

    def _connect(self) -> smtplib.SMTP:
        host, port, timeout = self.target.host, self.target.port, self.timeout_seconds
        if self.target.security == "tls":
            return smtplib.SMTP_SSL(host, port, timeout=timeout, context=self._tls)
        return smtplib.SMTP(host, port, timeout=timeout)

    def _secure(self, smtp: smtplib.SMTP) -> None:
        smtp.ehlo()
        if self.target.security != "starttls":
            return
        if not smtp.has_extn("starttls"):  # a downgrade (or a plain relay): the message stays here
            raise MailFailure("starttls_unavailable", permanent=True)
        smtp.starttls(context=self._tls)
        smtp.ehlo()


def _refused(code: int | None) -> MailFailure:
    permanent = code is not None and 500 <= code < 600  # 4xx: try again later
    return MailFailure("refused", permanent=permanent, smtp_code=code)
