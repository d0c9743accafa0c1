"""What account actions need from the composition root: a narrow view of idp/web's
Services (which satisfies it as it is), so this package never imports the web layer."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from idp.lockout import Lockout
from idp.login.sessions import SessionPolicy
from idp.mail.mailer import Mailer
from idp.mfa.factors import SecondFactors
from idp.mfa.passkeys import Passkeys
from idp.security.keyring import Keyring
from idp.settings import Settings


class AccountServices(Protocol):
    # read-only properties: the real Services is a frozen dataclass
    @property
    def settings(self) -> Settings: ...

    @property
    def sessions(self) -> sessionmaker[Session]: ...  # the database's units of work

    @property
    def keyring(self) -> Keyring: ...

    @property
    def session_policy(self) -> SessionPolicy: ...

    @property
    def lockout(self) -> Lockout: ...

    @property
    def factors(self) -> SecondFactors: ...

    @property
    def passkeys(self) -> Passkeys: ...

    @property
    def mail(self) -> Mailer: ...  # notices, queued once a change has committed
