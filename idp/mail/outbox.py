"""The outbox: mail queued off the request path and sent by one background thread per
process (smtplib blocks), so a sign-in or an /account page never waits on SMTP. A bounded
queue; a failed attempt is tried again after each of `retry_delays_seconds` (3 attempts
over about a minute), unless the failure is permanent. Each message ends audited once:
mail.sent, or mail.failed with its reason; the row names the recipient's user_id and the
mail's kind, never the address or the body. A job for nobody (user_id None) is queued and
dropped unaudited: it exists so that asking for a reset costs the same for every name.

The queue is in memory: mail still queued when a process dies is lost (README, E-mail).
Notices are best effort (the audit trail and /account's activity keep the change itself);
one-time links can be issued again."""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from idp.audit.trail import record_audit
from idp.clock import Clock
from idp.db.models import User
from idp.mail.messages import Composer, InvalidRecipient, Recipient
from idp.mail.smtp import MailFailure, SmtpTransport

log = logging.getLogger("idp.mail")

RETRY_DELAYS_SECONDS = (15.0, 45.0)
CAPACITY = 1000  # messages waiting per process; beyond it a message is dropped (and audited)


@dataclass(frozen=True)
class Job:
    template: str  # templates/mail/<template>.txt and .html; the audit's `kind`
    subject: str
    # the recipient: their address on file is read when the mail is sent. None: nobody (a
    # reset asked for a name no link may reach); queued all the same, so that such a request
    # costs what any other does, then nothing is sent and nothing audited
    user_id: int | None
    facts: Mapping[str, object] = field(default_factory=dict, repr=False)  # links will carry tokens
    verified_only: bool = False  # True for one-time links: only to a verified address


_STOP = object()


class Outbox:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        clock: Clock,
        composer: Composer,
        transport: SmtpTransport,
        envelope_from: str,
        retry_delays_seconds: Sequence[float] = RETRY_DELAYS_SECONDS,
        capacity: int = CAPACITY,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.composer = composer
        self.transport = transport
        self.envelope_from = envelope_from
        self.retry_delays_seconds = tuple(retry_delays_seconds)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=capacity)
        self._pending = 0  # submitted and not yet sent or given up
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def attempts(self) -> int:
        return len(self.retry_delays_seconds) + 1

    def submit(self, job: Job) -> None:
        """Never blocks; a full queue drops the message (audited mail.failed, queue_full)."""
        self._start()
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            log.warning("mail queue full: %s for user %s dropped", job.template, job.user_id)
            self._audit(job, "mail.failed", "failure", attempts=0, reason="queue_full")
            self._done()

    def wait_idle(self, timeout_seconds: float) -> bool:
        """True once everything submitted is sent or given up (for tests and the CLI)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout_seconds)

    def close(self, timeout_seconds: float) -> None:
        """Messages already queued get their next attempt; retries still waiting are given up
        (audited, `stopped`). Whatever is unsent after `timeout_seconds` is lost."""
        thread = self._thread
        if thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout_seconds)
        except queue.Full:
            pass
        thread.join(timeout_seconds)
        if thread.is_alive():
            log.warning("mail: %d message(s) not sent before stopping", self._pending)

    def _start(self) -> None:
        # on first use, so that a process forked after create_app (workers) runs its own thread
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="idp-mail", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        waiting: list[tuple[float, int, Job, int]] = []  # (due on the monotonic clock, tie, job, attempts made)
        order = itertools.count()
        while True:
            timeout = max(0.0, waiting[0][0] - time.monotonic()) if waiting else None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                for _, _, job, made in waiting:
                    self._give_up(job, made, "stopped")
                return
            due: list[tuple[Job, int]] = [(item, 0)] if isinstance(item, Job) else []
            while waiting and waiting[0][0] <= time.monotonic():
                _, _, job, made = heapq.heappop(waiting)
                due.append((job, made))
            for job, made in due:
                delay = self._attempt(job, made + 1)
                if delay is not None:
                    heapq.heappush(waiting, (time.monotonic() + delay, next(order), job, made + 1))

    def _attempt(self, job: Job, attempt: int) -> float | None:
        """One try; the delay before the next one, or None when this message is finished."""
        try:
            sent = self._send(job)
        except InvalidRecipient:
            self._give_up(job, attempt, "invalid_address")
            return None
        except MailFailure as failure:
            if failure.permanent or attempt >= self.attempts:
                self._give_up(job, attempt, failure.reason, smtp_code=failure.smtp_code)
                return None
            log.info("mail %s for user %s: attempt %d failed (%s)", job.template, job.user_id, attempt, failure.reason)
            return self.retry_delays_seconds[attempt - 1]
        except Exception:  # noqa: BLE001 - the sending thread must outlive any one message
            log.exception("mail %s for user %s: attempt %d failed", job.template, job.user_id, attempt)
            if attempt >= self.attempts:
                self._give_up(job, attempt, "error")
                return None
            return self.retry_delays_seconds[attempt - 1]
        if sent:
            self._audit(job, "mail.sent", "success", attempts=attempt)
        self._done()  # after the audit row: wait_idle() returns with it written
        return None

    def _send(self, job: Job) -> bool:
        recipient = self._recipient(job)
        if recipient is None:  # no address on file (or none verified, for a link): nothing to send
            log.info("mail %s for user %s: no address to send it to", job.template, job.user_id)
            return False
        message = self.composer.compose(job.template, job.subject, recipient, job.facts, now=self.clock.now())
        self.transport.send(message, envelope_from=self.envelope_from, to=recipient.address)
        return True

    def _recipient(self, job: Job) -> Recipient | None:
        if job.user_id is None:
            return None
        with self.sessions() as db:
            user = db.get(User, job.user_id)
            if user is None or not user.email or (job.verified_only and not user.email_verified):
                return None
            return Recipient.of(user.email, user.name or user.username)

    def _give_up(self, job: Job, attempts: int, reason: str, *, smtp_code: int | None = None) -> None:
        log.warning("mail %s for user %s not sent after %d attempt(s): %s", job.template, job.user_id, attempts, reason)
        extra = {"smtp_code": smtp_code} if smtp_code is not None else {}
        self._audit(job, "mail.failed", "failure", attempts=attempts, reason=reason, **extra)
        self._done()

    def _audit(self, job: Job, kind: str, outcome: str, **detail: Any) -> None:
        if job.user_id is None:  # nobody's mail: nothing happened to anyone
            return
        try:
            with self.sessions.begin() as db:
                record_audit(db, kind, user_id=job.user_id, outcome=outcome, mail=job.template, **detail)
        except Exception:  # noqa: BLE001 - the database may be what is failing
            log.exception("auditing %s (%s for user %s) failed", kind, job.template, job.user_id)

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()
