"""Debian's nginx running deploy/nginx.conf in a test, as this user, on free ports: the
binary (or the CI-aware skip), a throw-away TLS certificate, and the production file with
named substitutions only, each of which must match exactly as often as stated, so that a
reshaped deploy/nginx.conf fails the tests instead of silently running a different config."""

from __future__ import annotations

import datetime
import grp
import ipaddress
import os
import pwd
import re
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import unavailable

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
Rule = tuple[str, str, int]  # (pattern, replacement, how many times it must occur)


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        unavailable("nginx not found (apt-get install nginx)")
    return str(found)


def self_signed(directory: Path) -> Path:
    """An EC P-256 certificate for localhost and 127.0.0.1; returns the certificate's path
    (idp.crt, with idp.key beside it)."""
    directory.mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "idp.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (directory / "idp.key").chmod(0o600)
    (directory / "idp.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return directory / "idp.crt"


def local_rules(work: Path) -> list[Rule]:
    """What every test run changes: this user, paths under `work`, localhost as the host name."""
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    return [
        (r"^user www-data;", f"user {user} {group};", 1),  # only used when run as root
        (r"/run/nginx\.pid", f"{work}/nginx.pid", 1),
        (r"/var/log/nginx/", f"{work}/logs/", 2),
        (r"/var/lib/nginx/", f"{work}/temp/", 5),
        (r"/etc/nginx/tls/idp\.crt", f"{work}/tls/idp.crt", 2),  # counts include the header comment
        (r"/etc/nginx/tls/idp\.key", f"{work}/tls/idp.key", 2),
        (r"\bid\.example\.com\b", "localhost", 4),  # the issuer's host name
    ]


def adapted_config(rules: list[Rule]) -> str:
    """deploy/nginx.conf with these substitutions, each matching exactly its stated count."""
    text = CONFIG.read_text()
    for pattern, replacement, count in rules:
        text, done = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert done == count, f"deploy/nginx.conf changed shape: {pattern!r} found {done} times, not {count}"
    return text
