"""Notices of changes an administrator made from the command line (`idp user set-password`,
`idp user reset-mfa`): the user hears of them as of changes made on /account, so a password
or factors changed behind their back do not go unnoticed. Sent after the command's commit
by a mailer of the command's own, waited for briefly; a failure is a warning (the change is
made) and audited by the outbox as any mail is. Without IDP_SMTP_URL nothing happens."""

from __future__ import annotations

import logging
import sys

from sqlalchemy.orm import Session, sessionmaker

from idp.mail.notices import Notice
from idp.settings import Settings

WAIT_SECONDS = 30.0
CLOSE_SECONDS = 5.0
FROM = "an administrator's command line"  # the notice's "From:" line, where /account gives the IP


def notify(settings: Settings, sessions: sessionmaker[Session], notice: Notice, user_id: int) -> None:
    if not settings.smtp_url:
        return
    from idp.clock import SystemClock
    from idp.mail.mailer import build_mailer

    logging.getLogger("idp.mail").setLevel(logging.ERROR)  # the command's output is its own lines
    mailer = build_mailer(settings, sessions, SystemClock())
    try:
        mailer.notify(notice, user_id, ip=FROM)
        finished = mailer.wait_idle(WAIT_SECONDS)
    finally:
        mailer.close(CLOSE_SECONDS)
    if not finished:
        print(f"warning: the notice to the user was not sent within {WAIT_SECONDS:g} s", file=sys.stderr)
