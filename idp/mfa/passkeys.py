"""Passkeys (WebAuthn, with py_webauthn): registration and sign-in ceremonies, their
single-use challenges in the state store, and the stored credentials.

- RP ID and origin come from IDP_ISSUER (the host, and scheme://host[:port]).
- Challenges are random, single use (get-and-delete), 5 minutes, and bound to what they
  were issued for: a registration to its user, a sign-in to its login transaction and to
  the name typed (username-first) or the user an earlier step proved (a second step or a
  step-up). A login transaction holds one live sign-in challenge: a new one replaces (and
  deletes) the one issued before.
- Sign-in options list a user's passkeys (allowCredentials) only once an earlier step has
  proved who the user is. Before that they are usernameless whatever name was typed: an
  empty allowCredentials, the same answer for a name with no account and for one with any
  number of passkeys of any length, no credential id for whoever types a name, and no
  database work for the name (F-01 and DESIGN.md §4).
- An assertion to usernameless options must carry the userHandle, and a userHandle must
  name the credential's owner (WebAuthn §7.2 step 6).
- A ceremony run in a frame of another origin (clientDataJSON.crossOrigin, which py_webauthn
  parses but does not check) is refused, registration and sign-in alike (WebAuthn §7.1
  step 10, §7.2 step 13): idp's pages are never framed.
- User verification is required: a passkey sign-in is `phr` on its own.
- The sign counter must grow; one that does not is refused (and audited by the caller),
  except the all-zero case of authenticators that do not count (synced passkeys).
"""

from __future__ import annotations

import base64
import builtins  # the class has a method named `list`
import functools
import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.clock import clock_of
from idp.db.models import Passkey, User
from idp.state.store import StateStore

if TYPE_CHECKING:
    from webauthn.helpers.structs import AuthenticatorTransport, PublicKeyCredentialDescriptor

# py_webauthn is imported by the ceremonies that use it, not with this module: importing it
# loads pyOpenSSL and every attestation format, 5 MB resident in a serving worker that may
# never see a passkey (idp serve on SQLite: 91.6 -> 86.4 MB; issue 19's idle-RSS goal). The
# first ceremony pays the import.

CHALLENGE_TTL_SECONDS = 300
NAME_MAX = 64


@functools.cache
def _transports() -> dict[str, AuthenticatorTransport]:
    from webauthn.helpers.structs import AuthenticatorTransport

    return {t.value: t for t in AuthenticatorTransport}


def base64url_to_bytes(value: str) -> bytes:
    """py_webauthn's own decoding (its helper would import the whole package): padding is
    optional, junk raises binascii.Error, a ValueError."""
    return base64.urlsafe_b64decode(f"{value}===")


def bytes_to_base64url(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).decode("ascii").rstrip("=")


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
class Registration:
    """A registration that verified, not stored yet (`add` stores it): the login chain's
    enrolment writes it only once every other check of its request has passed."""

    user_id: int
    credential_id: bytes
    public_key: bytes
    sign_count: int
    transports: tuple[str, ...]
    name: str
    backed_up: bool


@dataclass(frozen=True)
class SignedIn:
    user_id: int
    passkey_id: int
    methods: tuple[str, ...]  # RFC 8176: hwk (device-bound) or swk (synced), and user (verified)


class Passkeys:
    def __init__(self, store: StateStore, rp: RelyingParty) -> None:
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

    # ---- registration (/account, and the login chain's enrolment) -----------------------------

    def registration_options(self, db: Session, user: User, *, tx_id: str | None = None) -> Challenge:
        """`tx_id`: the login transaction an enrolment runs in; its challenge answers only
        there, and /account's (None) only on /account."""
        if user.webauthn_handle is None:
            user.webauthn_handle = secrets.token_bytes(32)
            db.flush()
        import webauthn
        from webauthn.helpers.structs import (
            AuthenticatorSelectionCriteria,
            ResidentKeyRequirement,
            UserVerificationRequirement,
        )

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
        challenge_id = self._issue("register", options.challenge, user_id=user.id, tx_id=tx_id)
        return Challenge(challenge_id, webauthn.options_to_json(options))

    def register(self, db: Session, user: User, challenge_id: object, credential: object, name: object) -> Passkey:
        return self.add(db, self.verify_registration(db, user, challenge_id, credential, name))

    def verify_registration(
        self,
        db: Session,
        user: User,
        challenge_id: object,
        credential: object,
        name: object,
        *,
        expected_tx_id: str | None = None,
    ) -> Registration:
        """Checks a registration (and spends its challenge) without storing it."""
        record = self._take(challenge_id, "register")
        if record.get("user_id") != user.id:
            raise PasskeyError("challenge issued to another user")
        if record.get("tx_id") != expected_tx_id:
            raise PasskeyError("challenge issued for another ceremony")
        _verify_same_origin(credential)
        import webauthn
        from webauthn.helpers.exceptions import WebAuthnException

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
        return Registration(
            user_id=user.id,
            credential_id=verified.credential_id,
            public_key=verified.credential_public_key,
            sign_count=verified.sign_count,
            transports=tuple(t for t in _transports_of(credential) if t in _transports()),
            name=clean_name(name),
            backed_up=bool(verified.credential_backed_up),
        )

    @staticmethod
    def add(db: Session, registration: Registration) -> Passkey:
        row = Passkey(
            user_id=registration.user_id,
            credential_id=registration.credential_id,
            public_key=registration.public_key,
            sign_count=registration.sign_count,
            transports=list(registration.transports),
            name=registration.name,
            backed_up=registration.backed_up,
        )
        db.add(row)
        db.flush()
        return row

    # ---- sign-in (login chain) -------------------------------------------------------------

    def sign_in_options(
        self, db: Session, *, tx_id: str, username: str | None = None, user_id: int | None = None
    ) -> Challenge:
        """For a user an earlier step proved (user_id: a second step or a step-up), the options
        list that user's passkeys. Otherwise they are usernameless, whatever name was typed
        (the same answer for every name: no enumeration); a typed name only binds the
        challenge, so that only that name's own passkey can answer it."""
        import webauthn
        from webauthn.helpers.structs import UserVerificationRequirement

        proven = self.list(db, user_id) if user_id is not None else []
        allow = [self._descriptor(p.credential_id, p.transports) for p in proven]
        options = webauthn.generate_authentication_options(
            rp_id=self.rp.rp_id,
            timeout=CHALLENGE_TTL_SECONDS * 1000,
            allow_credentials=allow,
            user_verification=UserVerificationRequirement.REQUIRED,
        )
        bound = {"user_id": user_id} if user_id is not None else {"username": username}
        challenge_id = self._issue("sign_in", options.challenge, tx_id=tx_id, listed=bool(allow), **bound)
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
        row, owner = _credential_and_owner(db, record, credential)
        _verify_same_origin(credential)
        import webauthn
        from webauthn.helpers.exceptions import WebAuthnException

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
        from webauthn.helpers.structs import PublicKeyCredentialDescriptor

        known = _transports()
        return PublicKeyCredentialDescriptor(
            id=credential_id, transports=[known[t] for t in transports if t in known] or None
        )


def clean_name(name: object) -> str:
    text = " ".join(str(name).split())[:NAME_MAX] if isinstance(name, str) else ""
    return text or "Passkey"


def _credential_and_owner(db: Session, record: dict[str, Any], credential: object) -> tuple[Passkey, User]:
    """The stored credential an assertion names and its owner, who must be the user or the
    name the challenge was bound to; when the options listed no credential, the assertion's
    userHandle is what names the user, so it must be there (WebAuthn §7.2 step 6)."""
    row = db.scalar(select(Passkey).where(Passkey.credential_id == _raw_id(credential)))
    owner = db.get(User, row.user_id) if row is not None else None
    if row is None or owner is None:
        raise PasskeyError("unknown credential")
    bound_id, bound_name = record.get("user_id"), record.get("username")
    if (bound_id is not None and bound_id != owner.id) or (bound_name is not None and bound_name != owner.username):
        raise PasskeyError("credential of another user")
    handle = _user_handle(credential)
    if handle is None and record.get("listed") is not True:
        raise PasskeyError("usernameless assertion without a user handle")
    if handle is not None and handle != owner.webauthn_handle:
        raise PasskeyError("user handle does not match the credential")
    return row, owner


def _verify_same_origin(credential: object) -> None:
    """Refuses a ceremony a browser reports as run in a frame of another origin (crossOrigin
    true, or a topOrigin): idp's pages send frame-ancestors 'none', so that is a page
    embedding idp's WebAuthn call. py_webauthn parses the flag but does not check it."""
    response = _as_dict(credential).get("response")
    encoded = response.get("clientDataJSON") if isinstance(response, dict) else None
    try:
        client_data = json.loads(base64url_to_bytes(encoded)) if isinstance(encoded, str) else None
    except (ValueError, RecursionError):
        client_data = None
    if not isinstance(client_data, dict):
        raise PasskeyError("malformed client data")
    if client_data.get("crossOrigin") not in (None, False) or "topOrigin" in client_data:
        raise PasskeyError("ceremony in a cross-origin frame")


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
