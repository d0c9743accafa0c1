"""A software WebAuthn authenticator for tests: plays the browser (clientDataJSON, the JSON
shape idp/static/passkeys.js posts) and a platform authenticator (EC P-256 keys, "none"
attestation, authenticator data with its flags and sign counter).

Every knob a test needs to make a ceremony fail in one precise way is a keyword argument:
the origin the browser reports, the RP ID whose hash goes into the authenticator data, the
user-verification flag, the sign counter (a counting authenticator adds one per assertion;
`counting=False` always reports 0; `sign_count=` sets the value of one ceremony, e.g. to go
backwards), the backup flags (BE/BS: a synced passkey) and the userHandle.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.encode_cbor import encode_cbor

FLAG_UP = 0x01
FLAG_UV = 0x04
FLAG_BE = 0x08
FLAG_BS = 0x10
FLAG_AT = 0x40

_UNSET: Any = object()


class NoCredential(LookupError):
    """The authenticator holds no credential the options allow (the browser's NotAllowedError)."""


class Excluded(LookupError):
    """The authenticator already holds a credential the registration excludes (InvalidStateError)."""


@dataclass
class Credential:
    id: bytes
    private_key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes | None  # kept for discoverable (resident) credentials: the usernameless userHandle
    sign_count: int = 0

    @property
    def b64id(self) -> str:
        return bytes_to_base64url(self.id)

    def cose_public_key(self) -> bytes:
        numbers = self.private_key.public_key().public_numbers()
        return encode_cbor({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")})


class SoftAuthenticator:
    """One authenticator (and the browser in front of it) with any number of credentials."""

    def __init__(
        self,
        *,
        origin: str = "http://localhost:8000",
        rp_id: str = "localhost",
        user_verified: bool = True,
        counting: bool = True,
        backup_eligible: bool = False,
        backed_up: bool = False,
        resident: bool = True,
        aaguid: bytes = bytes(16),
        credential_id_length: int = 32,
    ) -> None:
        self.origin = origin
        self.rp_id = rp_id
        self.user_verified = user_verified
        self.counting = counting
        self.backup_eligible = backup_eligible or backed_up
        self.backed_up = backed_up
        self.resident = resident
        self.aaguid = aaguid
        self.credential_id_length = credential_id_length
        self.credentials: dict[bytes, Credential] = {}

    # ---- credentials ---------------------------------------------------------------------------

    def new_credential(self, *, rp_id: str | None = None, user_handle: bytes | None = None) -> Credential:
        """A key pair made on the authenticator (and not registered anywhere yet)."""
        credential = Credential(
            id=secrets.token_bytes(self.credential_id_length),
            private_key=ec.generate_private_key(ec.SECP256R1()),
            rp_id=rp_id or self.rp_id,
            user_handle=user_handle if self.resident else None,
        )
        self.credentials[credential.id] = credential
        return credential

    def credential(self, credential_id: bytes | str | None = None) -> Credential:
        if credential_id is None:
            if len(self.credentials) != 1:
                raise NoCredential("name the credential: this authenticator holds several")
            return next(iter(self.credentials.values()))
        raw = base64url_to_bytes(credential_id) if isinstance(credential_id, str) else credential_id
        return self.credentials[raw]

    # ---- navigator.credentials.create ------------------------------------------------------------

    def create(
        self,
        options: dict[str, Any],
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        user_verified: bool | None = None,
        sign_count: int | None = None,
        challenge: str | None = None,
        reuse: Credential | None = None,
        cross_origin: bool = False,
    ) -> dict[str, Any]:
        """A registration response (RegistrationResponseJSON) to PublicKeyCredentialCreationOptions
        (the JSON `publicKey`). `reuse` attests an existing credential again (what a replaying
        client could send); otherwise a real authenticator refuses when it holds an excluded one."""
        options = options.get("publicKey", options)
        rp_id = rp_id or options.get("rp", {}).get("id") or self.rp_id
        user_handle = base64url_to_bytes(options["user"]["id"]) if options.get("user", {}).get("id") else None
        if reuse is None:
            excluded = {base64url_to_bytes(d["id"]) for d in options.get("excludeCredentials") or []}
            if excluded & set(self.credentials):
                raise Excluded("this authenticator already holds an excluded credential")
            credential = self.new_credential(rp_id=rp_id, user_handle=user_handle)
        else:
            credential = reuse
        if sign_count is not None:
            credential.sign_count = sign_count
        client_data = self._client_data("webauthn.create", challenge or options["challenge"], origin, cross_origin)
        attested = self.aaguid + struct.pack(">H", len(credential.id)) + credential.id + credential.cose_public_key()
        auth_data = self._auth_data(rp_id, user_verified, credential.sign_count, FLAG_AT) + attested
        attestation_object = encode_cbor({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return {
            "id": credential.b64id,
            "rawId": credential.b64id,
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": bytes_to_base64url(client_data),
                "attestationObject": bytes_to_base64url(attestation_object),
                "transports": ["internal"],
            },
        }

    # ---- navigator.credentials.get ---------------------------------------------------------------

    def get(
        self,
        options: dict[str, Any],
        *,
        credential: Credential | bytes | str | None = None,
        origin: str | None = None,
        rp_id: str | None = None,
        user_verified: bool | None = None,
        sign_count: int | None = None,
        user_handle: bytes | None = _UNSET,
        challenge: str | None = None,
        cross_origin: bool = False,
        signature: bytes | None = None,
    ) -> dict[str, Any]:
        """An assertion (AuthenticationResponseJSON) to PublicKeyCredentialRequestOptions. The
        credential is the one named, else the one allowCredentials lists, else (usernameless) a
        discoverable one for the RP ID."""
        options = options.get("publicKey", options)
        chosen = self._choose(options, credential)
        rp_id = rp_id or options.get("rpId") or chosen.rp_id
        if sign_count is not None:
            chosen.sign_count = sign_count
        elif self.counting:
            chosen.sign_count += 1
        count = chosen.sign_count if self.counting or sign_count is not None else 0
        client_data = self._client_data("webauthn.get", challenge or options["challenge"], origin, cross_origin)
        auth_data = self._auth_data(rp_id, user_verified, count, 0)
        if signature is None:
            signature = chosen.private_key.sign(
                auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
            )
        handle = chosen.user_handle if user_handle is _UNSET else user_handle
        return {
            "id": chosen.b64id,
            "rawId": chosen.b64id,
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": bytes_to_base64url(client_data),
                "authenticatorData": bytes_to_base64url(auth_data),
                "signature": bytes_to_base64url(signature),
                "userHandle": bytes_to_base64url(handle) if handle is not None else None,
            },
        }

    # ---- helpers --------------------------------------------------------------------------------

    def _choose(self, options: dict[str, Any], credential: Credential | bytes | str | None) -> Credential:
        if isinstance(credential, Credential):
            return credential
        if credential is not None:
            return self.credential(credential)
        allowed = [base64url_to_bytes(d["id"]) for d in options.get("allowCredentials") or []]
        if allowed:
            for raw in allowed:
                if raw in self.credentials:
                    return self.credentials[raw]
            raise NoCredential("none of the allowed credentials is on this authenticator")
        wanted = options.get("rpId") or self.rp_id  # an `rp_id=` override changes only the hash signed
        for held in self.credentials.values():
            if held.rp_id == wanted and held.user_handle is not None:
                return held
        raise NoCredential("no discoverable credential for this RP")

    def _client_data(self, kind: str, challenge: str, origin: str | None, cross_origin: bool) -> bytes:
        return json.dumps(
            {"type": kind, "challenge": challenge, "origin": origin or self.origin, "crossOrigin": cross_origin},
            separators=(",", ":"),
        ).encode()

    def _auth_data(self, rp_id: str, user_verified: bool | None, sign_count: int, extra_flags: int) -> bytes:
        flags = FLAG_UP | extra_flags
        if self.user_verified if user_verified is None else user_verified:
            flags |= FLAG_UV
        if self.backup_eligible:
            flags |= FLAG_BE
        if self.backed_up:
            flags |= FLAG_BS
        return hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + struct.pack(">I", sign_count)
