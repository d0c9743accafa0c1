"""Passkeys (WebAuthn, with py_webauthn): registration and sign-in ceremonies, their
single-use challenges in the state store, and the stored credentials.

- RP ID and origin come from IDP_ISSUER (the host, and scheme://host[:port]).
- Challenges are random, single use (get-and-delete), 5 minutes, and bound to what they
  were issued for: a registration to its user, a sign-in to its login transaction and, for
  a username-first or step-up sign-in, to the user it named. A login transaction holds
  one live sign-in challenge: a new one replaces (and deletes) the one issued before.
- User verification is required: a passkey sign-in is `phr` on its own.
- The sign counter must grow; one that does not is refused (and audited by the caller),
  except the all-zero case of authenticators that do not count (synced passkeys).
- Username-first options for a name with no account, or an account with no passkeys, carry
  fake credential descriptors derived from the name with a keyed hash: the same answer on
  every probe, the same shape as a real one, after the same database work (F-01 and the
  predecessor's gap).
"""

from __future__ import annotations

import builtins  # the class has a method named `list`
import json
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import webauthn
from sqlalchemy import select
from sqlalchemy.orm import Session
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from idp.clock import clock_of
from idp.db.models import Passkey, User
from idp.security.keyring import Keyring
from idp.state.store import StateStore

CHALLENGE_TTL_SECONDS = 300
NAME_MAX = 64
_TRANSPORTS = {t.value: t for t in AuthenticatorTransport}


class PasskeyError(ValueError):
    """A ceremony that did not verify; `reason` is for the audit trail, never the page."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RelyingParty:
    rp_id: str
    origin: str
    name: str

    @staticmethod
    def from_issuer(issuer: str) -> RelyingParty:
        parts = urlsplit(issuer)
        return RelyingParty(rp_id=parts.hostname or "localhost", origin=f"{parts.scheme}://{parts.netloc}", name="idp")


@dataclass(frozen=True)
class Challenge:
    id: str
    options_json: str  # PublicKeyCredentialCreationOptions / RequestOptions, as the browser wants them


@dataclass(frozen=True)
class SignedIn:
    user_id: int
    passkey_id: int
    methods: tuple[str, ...]  # RFC 8176: hwk (device-bound) or swk (synced), and user (verified)


class Passkeys:
    def __init__(self, keyring: Keyring, store: StateStore, rp: RelyingParty) -> None:
        self.keyring = keyring
        self.store = store
        self.rp = rp

    # ---- challenges ----------------------------------------------------------------------

    def _issue(self, kind: str, challenge: bytes, **bound: Any) -> str:
        challenge_id = secrets.token_urlsafe(24)
        record = {"kind": kind, "challenge": bytes_to_base64url(challenge), **bound}
        self.store.set(f"webauthn:{challenge_id}", json.dumps(record).encode(), ttl_seconds=CHALLENGE_TTL_SECONDS)
        return challenge_id

    def _take(self, challenge_id: object, kind: str) -> dict[str, Any]:
        if not isinstance(challenge_id, str) or not 16 <= len(challenge_id) <= 64:
            raise PasskeyError("malformed challenge id")
        raw = self.store.take(f"webauthn:{challenge_id}")  # single use, whatever happens next
        if raw is None:
            raise PasskeyError("unknown, used or expired challenge")
        record: dict[str, Any] = json.loads(raw)
        if record.get("kind") != kind:
            raise PasskeyError("challenge issued for another ceremony")
        return record

    # ---- registration (/account) -----------------------------------------------------------

    def registration_options(self, db: Session, user: User) -> Challenge:
        if user.webauthn_handle is None:
            user.webauthn_handle = secrets.token_bytes(32)
            db.flush()
        existing = self.list(db, user.id)
        options = webauthn.generate_registration_options(
            rp_id=self.rp.rp_id,
            rp_name=self.rp.name,
            user_name=user.username,
            user_id=user.webauthn_handle,
            user_display_name=user.name or user.username,
            timeout=CHALLENGE_TTL_SECONDS * 1000,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.REQUIRED, user_verification=UserVerificationRequirement.REQUIRED
            ),
            exclude_credentials=[self._descriptor(p.credential_id, p.transports) for p in existing],
        )
        challenge_id = self._issue("register", options.challenge, user_id=user.id)
        return Challenge(challenge_id, webauthn.options_to_json(options))

    def register(self, db: Session, user: User, challenge_id: object, credential: object, name: object) -> Passkey:
        record = self._take(challenge_id, "register")
        if record.get("user_id") != user.id:
            raise PasskeyError("challenge issued to another user")
        try:
            verified = webauthn.verify_registration_response(
                credential=_credential_json(credential),
                expected_challenge=base64url_to_bytes(record["challenge"]),
                expected_rp_id=self.rp.rp_id,
                expected_origin=self.rp.origin,
                require_user_verification=True,
            )
        except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
            raise PasskeyError(f"registration did not verify: {type(exc).__name__}") from None
        if db.scalar(select(Passkey.id).where(Passkey.credential_id == verified.credential_id)) is not None:
            raise PasskeyError("credential already registered")
        transports = [t for t in _transports_of(credential) if t in _TRANSPORTS]
        row = Passkey(
            user_id=user.id,
            credential_id=verified.credential_id,
            public_key=verified.credential_public_key,
            sign_count=verified.sign_count,
            transports=transports,
            name=clean_name(name),
            backed_up=bool(verified.credential_backed_up),
        )
        db.add(row)
        db.flush()
        return row

    # ---- sign-in (login chain) -------------------------------------------------------------

    def sign_in_options(
        self, db: Session, *, tx_id: str, username: str | None = None, user_id: int | None = None
    ) -> Challenge:
        """Usernameless (no name: any discoverable passkey), username-first (a typed name),
        or for a known user (a step-up: user_id)."""
        allow: list[PublicKeyCredentialDescriptor] | None = None
        bound: int | None = None
        if user_id is not None or username is not None:
            if user_id is None:
                user_id = db.scalar(select(User.id).where(User.username == username))
            rows = db.execute(
                select(Passkey.credential_id, Passkey.transports).where(
                    Passkey.user_id == (user_id if user_id is not None else -1)
                )
            ).all()  # same query, known or not
            # no transports in sign-in options: real ones vary by authenticator and would set
            # real descriptors apart from the fakes (they are only a hint to the browser)
            allow = [PublicKeyCredentialDescriptor(id=r.credential_id) for r in rows] or self._fakes(username or "")
            bound = user_id if user_id is not None else -1  # an unknown name can be signed in by no passkey
        options = webauthn.generate_authentication_options(
            rp_id=self.rp.rp_id,
            timeout=CHALLENGE_TTL_SECONDS * 1000,
            allow_credentials=allow or [],
            user_verification=UserVerificationRequirement.REQUIRED,
        )
        challenge_id = self._issue("sign_in", options.challenge, tx_id=tx_id, user_id=bound)
        self._make_live(tx_id, challenge_id)
        return Challenge(challenge_id, webauthn.options_to_json(options))

    def _make_live(self, tx_id: str, challenge_id: str) -> None:
        """The transaction's pointer names its one live challenge; the previous one goes.
        Two racing requests both write the pointer: the last one wins, and sign_in accepts
        only the challenge the pointer names, so one is live whatever the order."""
        pointer = f"webauthn-live:{tx_id}"
        previous = self.store.get(pointer)
        self.store.set(pointer, challenge_id.encode(), ttl_seconds=CHALLENGE_TTL_SECONDS)
        if previous is not None and previous.decode() != challenge_id:
            self.store.delete(f"webauthn:{previous.decode()}")

    def sign_in(self, db: Session, *, tx_id: str, challenge_id: object, credential: object) -> SignedIn:
        record = self._take(challenge_id, "sign_in")
        if record.get("tx_id") != tx_id:
            raise PasskeyError("challenge issued for another sign-in")
        if self.store.get(f"webauthn-live:{tx_id}") != str(challenge_id).encode():
            raise PasskeyError("challenge replaced by a newer one")
        raw_id = _raw_id(credential)
        row = db.scalar(select(Passkey).where(Passkey.credential_id == raw_id))
        if row is None:
            raise PasskeyError("unknown credential")
        bound = record.get("user_id")
        if bound is not None and bound != row.user_id:
            raise PasskeyError("credential of another user")
        owner = db.get(User, row.user_id)
        handle = _user_handle(credential)
        if owner is None or (handle is not None and handle != owner.webauthn_handle):
            raise PasskeyError("user handle does not match the credential")
        try:
            # the counter is checked below, after the signature: py_webauthn checks it first,
            # so an unsigned junk assertion could pass for a cloned authenticator
            verified = webauthn.verify_authentication_response(
                credential=_credential_json(credential),
                expected_challenge=base64url_to_bytes(record["challenge"]),
                expected_rp_id=self.rp.rp_id,
                expected_origin=self.rp.origin,
                credential_public_key=row.public_key,
                credential_current_sign_count=0,
                require_user_verification=True,
            )
        except WebAuthnException as exc:
            raise PasskeyError(f"assertion did not verify: {type(exc).__name__}") from None
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise PasskeyError(f"malformed assertion: {type(exc).__name__}") from None
        if owner.disabled:
            raise PasskeyError("account disabled")  # after the signature: the same work as any account
        if (verified.new_sign_count > 0 or row.sign_count > 0) and verified.new_sign_count <= row.sign_count:
            raise PasskeyError("sign counter went backwards")  # a signed assertion: maybe a cloned key
        row.sign_count = verified.new_sign_count
        row.backed_up = bool(verified.credential_backed_up)
        row.last_used_at = clock_of(db).now()
        methods = ("swk" if row.backed_up else "hwk", "user")
        return SignedIn(user_id=row.user_id, passkey_id=row.id, methods=methods)

    @staticmethod
    def credential_key(credential: object) -> str | None:
        """The credential id an assertion names (base64url), whether or not any account has
        it; None for a malformed one."""
        try:
            return bytes_to_base64url(_raw_id(credential))
        except PasskeyError:
            return None

    @staticmethod
    def owner_of(db: Session, credential: object) -> int | None:
        """Whose passkey a (failed) assertion named, to count the failure against them."""
        try:
            raw_id = _raw_id(credential)
        except PasskeyError:
            return None
        return db.scalar(select(Passkey.user_id).where(Passkey.credential_id == raw_id))

    # ---- the list on /account ----------------------------------------------------------------

    @staticmethod
    def list(db: Session, user_id: int) -> list[Passkey]:
        return list(
            db.scalars(select(Passkey).where(Passkey.user_id == user_id).order_by(Passkey.created_at, Passkey.id))
        )

    @staticmethod
    def count(db: Session, user_id: int) -> int:
        return len(db.execute(select(Passkey.id).where(Passkey.user_id == user_id)).all())

    @staticmethod
    def find(db: Session, user_id: int, passkey_id: object) -> Passkey | None:
        if not isinstance(passkey_id, int):
            return None
        return db.scalar(select(Passkey).where(Passkey.id == passkey_id, Passkey.user_id == user_id))

    # ---- helpers -------------------------------------------------------------------------

    @staticmethod
    def _descriptor(credential_id: bytes, transports: builtins.list[str]) -> PublicKeyCredentialDescriptor:
        return PublicKeyCredentialDescriptor(
            id=credential_id, transports=[_TRANSPORTS[t] for t in transports if t in _TRANSPORTS] or None
        )

    def _fakes(self, username: str) -> builtins.list[PublicKeyCredentialDescriptor]:
        """One plausible descriptor (most accounts have one passkey), stable per name: a
        32-byte keyed digest, the length of the credential ids browsers make."""
        return [PublicKeyCredentialDescriptor(id=bytes.fromhex(self.keyring.digest(f"fake-passkey:{username}")))]


def clean_name(name: object) -> str:
    text = " ".join(str(name).split())[:NAME_MAX] if isinstance(name, str) else ""
    return text or "Passkey"


def _credential_json(credential: object) -> str:
    if isinstance(credential, dict):
        return json.dumps(credential)
    if isinstance(credential, str) and len(credential) <= 64_000:
        return credential
    raise PasskeyError("malformed credential")


def _as_dict(credential: object) -> dict[str, Any]:
    if isinstance(credential, dict):
        return credential
    try:
        value = json.loads(_credential_json(credential))
    except (ValueError, RecursionError):  # RecursionError: a string nesting JSON thousands deep
        raise PasskeyError("malformed credential") from None
    if not isinstance(value, dict):
        raise PasskeyError("malformed credential")
    return value


def _raw_id(credential: object) -> bytes:
    raw = _as_dict(credential).get("rawId") or _as_dict(credential).get("id")
    if not isinstance(raw, str) or not 1 <= len(raw) <= 1400:
        raise PasskeyError("malformed credential id")
    try:
        return base64url_to_bytes(raw)
    except ValueError:
        raise PasskeyError("malformed credential id") from None


def _user_handle(credential: object) -> bytes | None:
    response = _as_dict(credential).get("response")
    handle = response.get("userHandle") if isinstance(response, dict) else None
    if not handle:
        return None
    try:
        return base64url_to_bytes(handle) if isinstance(handle, str) else None
    except ValueError:
        raise PasskeyError("malformed user handle") from None


def _transports_of(credential: object) -> list[str]:
    response = _as_dict(credential).get("response")
    transports = response.get("transports") if isinstance(response, dict) else None
    return [t for t in transports if isinstance(t, str)][:8] if isinstance(transports, list) else []
