"""A real SMTP server for tests of idp's mail: aiosmtpd on a free loopback port, in one of
three kinds, plain (no STARTTLS offered: for smtp://…?starttls=off, or to be refused),
"starttls" (STARTTLS offered and required before MAIL, AUTH only over TLS) or "smtps" (TLS
from the first byte). The TLS kinds present a certificate for 127.0.0.1 and localhost signed
by a test CA made here with `cryptography`; `ca_file` is that CA, for IDP_SMTP_CA_FILE.

The server keeps what it received, each message parsed with the email package, and whether
it came over TLS and with which login."""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.processes import free_port

Kind = Literal["plain", "starttls", "smtps"]
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    raw: bytes
    over_tls: bool
    login: str | None  # the user name it authenticated as

    def part(self, content_type: str) -> str:
        """The decoded body of the text/plain or text/html alternative."""
        found = self.message.get_body(preferencelist=(content_type.split("/")[1],))
        assert found is not None and found.get_content_type() == content_type, self.message
        return cast(str, cast(EmailMessage, found).get_content())


@dataclass
class SmtpServer:
    kind: Kind
    port: int
    ca_file: str  # the test CA that signed its certificate ("" for a plain server)
    received: list[Received] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def url(self, *, user: str | None = None, password: str | None = None, starttls: bool = True) -> str:
        scheme = "smtps" if self.kind == "smtps" else "smtp"
        credentials = f"{user}{':' + password if password else ''}@" if user else ""
        query = "" if starttls or self.kind == "smtps" else "?starttls=off"
        return f"{scheme}://{credentials}{HOST}:{self.port}{query}"

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.received) >= count, timeout=timeout)
            return list(self.received)

    # aiosmtpd's handler hook
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = bytes(envelope.original_content or envelope.content)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        with self.arrived:
            self.received.append(
                Received(
                    envelope.mail_from,
                    tuple(envelope.rcpt_tos),
                    cast(EmailMessage, message),
                    raw,
                    over_tls=server.transport.get_extra_info("ssl_object") is not None,
                    login=login,
                )
            )
            self.arrived.notify_all()
        return "250 Message accepted for delivery"


@contextmanager
def smtp_server(kind: Kind = "plain", *, credentials: tuple[str, str] | None = None) -> Iterator[SmtpServer]:
    """`credentials`: the one (user, password) its AUTH accepts (TLS kinds only)."""
    server = SmtpServer(kind, free_port(), ca_file=str(_test_pki().ca_file) if kind != "plain" else "")
    options: dict[str, Any] = {}
    if kind == "starttls":
        options.update(tls_context=_test_pki().server_context(), require_starttls=True)
    if credentials is not None:
        options["authenticator"] = _authenticator(*credentials)
        # aiosmtpd counts only STARTTLS as TLS; over smtps the whole connection is
        options["auth_require_tls"] = kind != "smtps"
    controller = Controller(
        server,
        hostname=HOST,
        port=server.port,
        ssl_context=_test_pki().server_context() if kind == "smtps" else None,
        **options,
    )
    controller.start()
    try:
        yield server
    finally:
        controller.stop()


def _authenticator(user: str, password: str) -> Any:
    def check(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        expected = LoginPassword(user.encode(), password.encode())
        ok = isinstance(auth_data, LoginPassword) and auth_data == expected
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)  # handled=False: 535

    return check


# ---- the test CA --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pki:
    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.directory / "server.pem", self.directory / "server.key")
        return context


@cache
def _test_pki() -> _Pki:
    """A CA and a server certificate for 127.0.0.1 and localhost, once per test run."""
    directory = Path(tempfile.mkdtemp(prefix="idp-test-smtp-pki-"))
    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp test SMTP CA")])
    ca = (
        _certificate(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(*[False] * 5, True, True, False, False), critical=True)  # cert and CRL sign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
    server = (
        _certificate(server_name, ca_name, server_key.public_key(), now)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return _Pki(directory)


def _certificate(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
