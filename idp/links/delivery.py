"""A link's way to its user: by mail (templates/mail/link_<kind>.*), or shown to the admin
who issued it when mail is off or the user has no address it may go to. Links for a
recovery or a reset go only to a verified address (whoever controls an unverified one
could take the account over); an invitation goes to the address on file (its use then
verifies it), an address verification to the address it verifies."""

from __future__ import annotations

from dataclasses import dataclass

from idp.links.records import Issued, Kind, Offer
from idp.mail.mailer import Mailer
from idp.mail.outbox import Job

SUBJECTS: dict[str, str] = {
    "invite": "You are invited to set up your account",
    "recover": "Recover your account",
    "reset": "Reset your password",
    "verify": "Confirm your e-mail address",
}
VERIFIED_ONLY: frozenset[Kind] = frozenset({"recover", "reset"})


@dataclass(frozen=True)
class Recipient:
    """The user's address as the database holds it when the link is issued."""

    email: str | None
    verified: bool

    def may_receive(self, kind: Kind) -> bool:
        return self.email is not None and (self.verified or kind not in VERIFIED_ONLY)


def url_of(issuer: str, secret: str) -> str:
    """The secret in the query string, never the path (request lines are logged with the
    path; idp's access log drops query strings)."""
    return f"{issuer}/link?t={secret}"


def job_of(issued: Issued | Offer, issuer: str, *, at: str) -> Job:
    """The link's mail; an Offer for nobody (user_id None) makes a job the outbox drops."""
    return Job(
        template=f"link_{issued.kind}",
        subject=SUBJECTS[issued.kind],
        user_id=issued.user_id,
        facts={
            "link": url_of(issuer, issued.secret),
            "expires": issued.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
            "at": at,
        },
        verified_only=issued.kind in VERIFIED_ONLY,
    )


def send(mailer: Mailer, issued: Issued, issuer: str, *, at: str) -> None:
    mailer.submit(job_of(issued, issuer, at=at))
