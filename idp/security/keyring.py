"""The master key and what is derived from it: one key per purpose (HKDF-SHA256 with a
purpose label), AEAD encryption at rest (AES-256-GCM) and keyed digests of high-entropy
secrets (HMAC-SHA256) so tokens, codes and client secrets are never stored raw.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from functools import cache
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_FORMAT_V1 = b"\x01"


class DecryptionFailed(ValueError):
    """Ciphertext was tampered with, or encrypted under another master key."""


class Keyring:
    def __init__(self, master_key: str) -> None:
        if len(master_key) < 32:
            raise ValueError("master key must be at least 32 characters")
        self._master = master_key.encode("utf-8")
        self._digest_key = self.derive("digest:v1")

    def __repr__(self) -> str:
        return "Keyring(<hidden>)"

    def derive(self, purpose: str) -> bytes:
        return _hkdf(self._master, purpose.encode("utf-8"))

    def encrypt(self, purpose: str, plaintext: bytes, *, context: str = "") -> bytes:
        nonce = os.urandom(12)
        # the purpose (and the owner, as `context`) is bound as associated data: a ciphertext
        # cannot be moved to another use, nor to another user's row
        sealed = AESGCM(self.derive(f"aead:{purpose}")).encrypt(nonce, plaintext, _aad(purpose, context))
        return _FORMAT_V1 + nonce + sealed

    def decrypt(self, purpose: str, blob: bytes, *, context: str = "") -> bytes:
        if not blob.startswith(_FORMAT_V1) or len(blob) < 29:
            raise DecryptionFailed("unknown ciphertext format")
        nonce, sealed = blob[1:13], blob[13:]
        try:
            return AESGCM(self.derive(f"aead:{purpose}")).decrypt(nonce, sealed, _aad(purpose, context))
        except Exception:
            raise DecryptionFailed("ciphertext does not verify") from None

    def digest(self, secret: str) -> str:
        """Keyed digest for lookup and comparison of random secrets (tokens, codes, client secrets)."""
        return hmac.new(self._digest_key, secret.encode("utf-8"), hashlib.sha256).hexdigest()

    def check_digest(self, secret: str, expected_digest: str) -> bool:
        return hmac.compare_digest(self.digest(secret), expected_digest)


def _aad(purpose: str, context: str) -> bytes:
    return purpose.encode() if not context else f"{purpose}\x00{context}".encode()


@cache
def _hkdf(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"idp-keyring", info=info).derive(master)


def new_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def load_or_create_dev_master_key(data_dir: str) -> str:
    """Development default: a master key generated once into data_dir/secret.key (mode 0600)."""
    path = Path(data_dir) / "secret.key"
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = base64.urlsafe_b64encode(os.urandom(32)).decode("ascii").rstrip("=")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key + "\n")
    return key
