"""What the rest of idp calls: `Mailer.notify` queues a notice and returns at once; it never
raises into the caller, whose change is already committed. Without IDP_SMTP_URL the
mailer is off: nothing is queued and nothing fails. Built by the composition root."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from idp.clock import Clock
from idp.mail.config import SmtpTarget, parse_mail_from, parse_smtp_url
from idp.mail.messages import Composer
from idp.mail.notices import Notice
from idp.mail.outbox import RETRY_DELAYS_SECONDS, Job, Outbox
from idp.mail.smtp import SmtpTransport
from idp.settings import Settings, SettingsError

log = logging.getLogger("idp.mail")


class Mailer:
    def __init__(self, outbox: Outbox | None, clock: Clock) -> None:
        self._outbox = outbox
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self._outbox is not None

    def notify(self, notice: Notice, user_id: int, *, ip: str | None) -> None:
        """Queues `notice` to the user's address on file (if any); `ip`: where the change came from."""
        at = self._clock.now().strftime("%Y-%m-%d %H:%M UTC")
        self.submit(Job(notice.template, notice.subject, user_id, {"at": at, "ip": ip or "an unknown address"}))

    def submit(self, job: Job) -> None:
        if self._outbox is None:
            return
        try:
            self._outbox.submit(job)
        except Exception:  # noqa: BLE001 - a notice must never turn a committed change into an error page
            log.exception("queueing mail %s for user %s failed", job.template, job.user_id)

    def wait_idle(self, timeout_seconds: float) -> bool:
        return self._outbox.wait_idle(timeout_seconds) if self._outbox is not None else True

    def close(self, timeout_seconds: float) -> None:
        if self._outbox is not None:
            self._outbox.close(timeout_seconds)


def build_mailer(
    settings: Settings,
    sessions: sessionmaker[Session],
    clock: Clock,
    *,
    retry_delays_seconds: Sequence[float] = RETRY_DELAYS_SECONDS,
) -> Mailer:
    if not settings.smtp_url:
        return Mailer(None, clock)
    from_header, envelope_from = parse_mail_from(settings.mail_from)  # both checked by load_settings
    outbox = Outbox(
        sessions=sessions,
        clock=clock,
        composer=Composer(from_header, issuer=settings.issuer),
        transport=SmtpTransport(smtp_target_of(settings), ca_file=settings.smtp_ca_file),
        envelope_from=envelope_from,
        retry_delays_seconds=retry_delays_seconds,
    )
    return Mailer(outbox, clock)


def smtp_target_of(settings: Settings) -> SmtpTarget:
    target = parse_smtp_url(settings.smtp_url)
    if not settings.smtp_password_file:
        return target
    try:
        password = Path(settings.smtp_password_file).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"IDP_SMTP_PASSWORD_FILE: cannot read it: {type(exc).__name__}") from None
    return replace(target, password=password)


def describe(settings: Settings) -> str:
    """The start-up line: where mail goes, or that it is off. Never the credentials."""
    if not settings.smtp_url:
        return "mail off (IDP_SMTP_URL is not set): no notices are sent"
    return f"mail via {parse_smtp_url(settings.smtp_url).describe()} from {parse_mail_from(settings.mail_from)[1]}"
