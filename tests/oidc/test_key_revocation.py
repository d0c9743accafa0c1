"""Withdrawing a leaked signing key (`idp keys revoke KID`, idp/oidc/key_revocation.py) and
scheduled rotation (IDP_KEY_ROTATION_DAYS, idp/oidc/key_schedule.py). Each test names the
attack or failure it stops. A process reloads its keys every REFRESH_SECONDS (the background
refresher); here a test moves the clock by that much and runs the reload itself."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from joserfc import jws
from joserfc.errors import JoseError
from sqlalchemy import func, select, update
from starlette.applications import Starlette
from starlette.testclient import TestClient

from idp.app import REFRESH_SECONDS, create_app
from idp.db.models import AuditEvent, Client, SigningKey
from idp.oidc.key_revocation import KeyRevocationError, revoke_signing_key
from idp.oidc.key_schedule import RotationSchedule
from idp.oidc.signing_keys import PUBLISH_LEAD_SECONDS, published_keys, rotate_signing_key
from idp.settings import Settings
from idp.state.memory import MemoryStore
from tests.conftest import ISSUER
from tests.oidc.test_logout import configure
from tests.support.clock import ManualClock
from tests.support.rp import decode_id_token, tokens_for
from tests.support.seed import seed
from tests.test_cli import VALID_CLIENTS, Idp, assert_fails_in_one_line, parse_keys, rotated

TTL = 3600  # the settings fixture's IDP_ID_TOKEN_TTL_SECONDS
DAY = 86400


def kid_of(token: str) -> str:
    return str(jws.extract_compact(token.encode()).headers()["kid"])


def published_kids(client: TestClient) -> set[str]:
    return {key["kid"] for key in client.get("/jwks").json()["keys"]}


def tick(client: TestClient, clock: ManualClock) -> None:
    """One turn of the background refresher: REFRESH_SECONDS later, the process reloads its keys."""
    clock.advance(REFRESH_SECONDS)
    client.app.state.services.oidc.keys.reload()


def rotate(client: TestClient, *, signs_in: int, alg: str = "RS256") -> str:
    services = client.app.state.services
    with services.sessions.begin() as db:
        kid = rotate_signing_key(db, services.keyring, id_token_ttl_seconds=TTL, signs_in_seconds=signs_in, alg=alg).kid
    services.oidc.keys.reload()
    return kid


def revoke(client: TestClient, kid: str) -> str | None:
    services = client.app.state.services
    with services.sessions.begin() as db:
        return revoke_signing_key(db, kid, id_token_ttl_seconds=TTL).signer


def key_rows(client: TestClient) -> list[tuple[object, ...]]:
    with client.app.state.services.sessions() as db:
        rows = db.scalars(select(SigningKey).order_by(SigningKey.id))
        return [(k.kid, k.alg, k.signs_from, k.retired_at, k.unpublish_at, k.revoked_at) for k in rows]


def audit_events(client: TestClient, kind: str) -> list[AuditEvent]:
    with client.app.state.services.sessions() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))


def signing_kid(client: TestClient, alg: str = "RS256") -> str:
    return str(client.app.state.services.oidc.keys.get().key_for(alg).kid)


# -- revocation, in a running app -------------------------------------------------------------


def test_a_leaked_key_rotated_out_leaves_jwks_within_a_reload_once_revoked(client, clock):
    """The attack: `keys rotate --signs-in 0` for a leaked key left it in /jwks for the ID-token
    lifetime plus 5 minutes, so relying parties kept accepting tokens forged with it."""
    leaked = kid_of(tokens_for(client)["id_token"])
    forged = tokens_for(client)["id_token"]  # stands for a token the thief signs with the leaked key
    new = rotate(client, signs_in=0)
    assert leaked in published_kids(client)  # rotation alone keeps it published
    revoke(client, leaked)
    tick(client, clock)
    assert leaked not in published_kids(client)
    with pytest.raises(JoseError):
        decode_id_token(client, forged)  # an RP that refetched the key set refuses it
    assert kid_of(tokens_for(client)["id_token"]) == new


def test_revoking_the_signing_key_hands_over_to_its_published_successor_at_once(client, clock):
    """The attack: a leaked key whose successor was published with the default lead would sign
    every token until that lead ran out."""
    leaked = kid_of(tokens_for(client)["id_token"])
    successor = rotate(client, signs_in=PUBLISH_LEAD_SECONDS)
    assert revoke(client, leaked) == successor
    tick(client, clock)
    assert leaked not in published_kids(client)
    assert kid_of(tokens_for(client)["id_token"]) == successor
    clock.advance(PUBLISH_LEAD_SECONDS + TTL + 600)  # past every moment the leaked key had
    client.app.state.services.oidc.keys.reload()
    assert kid_of(tokens_for(client)["id_token"]) == successor
    assert leaked not in published_kids(client)


def test_a_revoked_successor_never_signs_and_its_predecessor_keeps_signing(client, clock):
    """The attack: a successor that leaked while published but not yet signing would start
    signing at its time (and leave its family without a key if that were merely skipped)."""
    current = kid_of(tokens_for(client)["id_token"])
    leaked = rotate(client, signs_in=PUBLISH_LEAD_SECONDS)
    assert revoke(client, leaked) == current
    tick(client, clock)
    assert leaked not in published_kids(client)
    clock.advance(PUBLISH_LEAD_SECONDS + TTL + 600)
    client.app.state.services.oidc.keys.reload()
    assert kid_of(tokens_for(client)["id_token"]) == current
    assert current in published_kids(client)


def test_a_revoked_key_in_the_middle_of_two_rotations_leaves_no_moment_without_a_signer(client, clock):
    """The failure: revoking the middle of three keys must not leave the family without a key
    between the first one's end and the last one's start (token requests would fail)."""
    first = signing_kid(client)
    middle = rotate(client, signs_in=600)  # the first signs until +600
    last = rotate(client, signs_in=1200)  # the middle one from +600 to +1200
    revoke(client, middle)
    for step, signer in ((300, first), (600, first), (600, last)):  # at +300, +900 (the gap) and +1500
        clock.advance(step)
        client.app.state.services.oidc.keys.reload()
        assert signing_kid(client) == signer
        assert middle not in published_kids(client)
    assert first in published_kids(client)  # it signed until +1200: published for its tokens' lifetime


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_revoking_the_only_key_of_an_algorithm_in_use_is_refused_and_changes_nothing(client, alg):
    """The failure: an admin's revoke of the one key that signs a client's tokens would take
    that client's sign-ins down (every token request a 500). RS256 is always in use (the
    default); ES256 once a client registers it."""
    configure(client, "spa", id_token_signed_response_alg="ES256")
    before = key_rows(client)
    with pytest.raises(KeyRevocationError) as refused:
        revoke(client, signing_kid(client, alg))
    message = str(refused.value)
    assert "\n" not in message and f"idp keys rotate --alg {alg}" in message
    assert key_rows(client) == before
    assert audit_events(client, "key.revoked") == []


def test_the_only_key_of_an_algorithm_no_client_uses_can_be_revoked(client, clock):
    """The attack: a leaked key of an algorithm no client uses still sits in /jwks, where a
    relying party that accepts any algorithm of the set takes a token forged with it."""
    leaked = signing_kid(client, "Ed25519")
    assert revoke(client, leaked) is None
    tick(client, clock)
    assert not {leaked, f"{leaked}.EdDSA"} & published_kids(client)
    assert kid_of(tokens_for(client)["id_token"]) == signing_kid(client)  # RS256 clients are untouched


def test_revoking_an_unused_algorithms_last_key_makes_a_fresh_one_so_a_client_synced_later_gets_tokens(client, clock):
    """The defect: revoking the only key of an algorithm no client used left that family with
    no signer, so a client synced with it afterwards got a 500 from /token until the next start."""
    services = client.app.state.services
    leaked = signing_kid(client, "Ed25519")
    with services.sessions.begin() as db:
        done = revoke_signing_key(db, leaked, id_token_ttl_seconds=TTL, keyring=services.keyring)
    assert done.signer is not None and done.signer != leaked
    tick(client, clock)
    assert signing_kid(client, "Ed25519") == done.signer and leaked not in published_kids(client)
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == "shop"))
        db.execute(
            update(Client)
            .where(Client.id == row.id)
            .values(config={**row.config, "id_token_signed_response_alg": "Ed25519"})
        )
    services.oidc.clients.reload()
    assert kid_of(tokens_for(client)["id_token"]) == done.signer


def test_a_revocation_is_audited(client):
    """The failure: a key withdrawn with no trace leaves incident responders guessing when."""
    leaked = signing_kid(client)
    successor = rotate(client, signs_in=0)
    revoke(client, leaked)
    [event] = audit_events(client, "key.revoked")
    assert event.outcome == "success"
    assert event.detail["kid"] == leaked and event.detail["alg"] == "RS256" and event.detail["signer"] == successor


@pytest.mark.parametrize("kid", ["no-such-kid", "", "x" * 300], ids=["unknown", "empty", "overlong"])
def test_an_unknown_kid_is_refused_in_one_line(client, kid):
    before = key_rows(client)
    with pytest.raises(KeyRevocationError, match="no signing key") as refused:
        revoke(client, kid)
    assert "\n" not in str(refused.value)
    assert key_rows(client) == before


def test_the_eddsa_entry_names_the_ed25519_key(client, clock):
    ed25519 = signing_kid(client, "Ed25519")
    revoke(client, f"{ed25519}.EdDSA")  # the kid an admin copies from /jwks
    tick(client, clock)
    assert not {ed25519, f"{ed25519}.EdDSA"} & published_kids(client)


# -- revocation, from the command line ----------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path) -> Idp:
    """A migrated SQLite database with one key of each algorithm and the clients of VALID_CLIENTS."""
    idp = Idp(tmp_path)
    idp.ok("db", "upgrade")
    idp.ok("keys", "rotate")
    idp.ok("clients", "sync", idp.write("clients.toml", VALID_CLIENTS))
    return idp


def test_keys_revoke_tells_the_admin_that_relying_parties_must_refetch_and_list_shows_it(cli: Idp) -> None:
    """The failure: an admin who believes revocation reaches relying parties by itself leaves
    them trusting the leaked key from their cached key sets."""
    leaked = {row[1]: row[0] for row in parse_keys(cli.ok("keys", "list"))}["RS256"]
    successor = rotated(cli.ok("keys", "rotate", "--alg", "RS256", "--signs-in", "0"))["RS256"]
    output = cli.ok("keys", "revoke", leaked)
    assert "relying parties must refetch their key sets" in output
    assert f"revoked RS256 signing key {leaked}" in output and f"signed by {successor}" in output
    states = {row[0]: row[3] for row in parse_keys(cli.ok("keys", "list"))}
    assert states[leaked].startswith("revoked at ") and states[successor] == "active"
    [(detail,)] = cli.query("SELECT detail FROM audit_events WHERE kind = 'key.revoked'")
    assert leaked in str(detail)


def test_keys_revoke_of_the_only_key_in_use_fails_in_one_line_and_changes_nothing(cli: Idp) -> None:
    only = {row[1]: row[0] for row in parse_keys(cli.ok("keys", "list"))}["RS256"]
    before = cli.ok("keys", "list")
    assert_fails_in_one_line(cli("keys", "revoke", only), only, "idp keys rotate --alg RS256")
    assert cli.ok("keys", "list") == before
    assert cli.query("SELECT count(*) FROM audit_events WHERE kind = 'key.revoked'") == [(0,)]


def test_keys_revoke_of_an_unknown_kid_fails_in_one_line(cli: Idp) -> None:
    assert_fails_in_one_line(cli("keys", "revoke", "no-such-kid"), "no signing key", "no-such-kid")


# -- scheduled rotation ---------------------------------------------------------------------------


def rotating_app(settings: Settings, clock: ManualClock, days: int, *, seeded: bool = True) -> Starlette:
    app = create_app(replace(settings, key_rotation_days=days), store=MemoryStore(), clock=clock)
    if seeded:
        seed(app.state.services)
    return app


@pytest.fixture
def rotating_client(settings: Settings, clock: ManualClock) -> Iterator[TestClient]:
    with TestClient(rotating_app(settings, clock, 30), base_url=ISSUER) as test_client:
        yield test_client


def count_by_alg(client: TestClient) -> dict[str, int]:
    with client.app.state.services.sessions() as db:
        rows = db.execute(select(SigningKey.alg, func.count()).group_by(SigningKey.alg))
        return {alg: count for alg, count in rows}


def test_scheduled_rotation_is_off_by_default(client, clock):
    """The failure: keys replaced behind the admin's back break relying parties that pinned a key."""
    before = key_rows(client)
    clock.advance(3650 * DAY)
    tick(client, clock)
    assert key_rows(client) == before


def test_no_key_is_rotated_before_it_is_due(rotating_client, clock):
    before = key_rows(rotating_client)
    clock.advance(30 * DAY - REFRESH_SECONDS - 1)
    tick(rotating_client, clock)  # one second short of 30 days
    assert key_rows(rotating_client) == before


def test_a_due_key_gets_one_successor_per_algorithm_in_use_published_before_it_signs(rotating_client, clock):
    """The attacks: a key never rotated gives a silent leak unlimited use; a successor that
    signed before every process and relying party published it would fail verification."""
    client = rotating_client
    configure(client, "spa", id_token_signed_response_alg="ES256")
    old = {alg: signing_kid(client, alg) for alg in ("RS256", "ES256", "Ed25519")}
    clock.advance(30 * DAY)
    tick(client, clock)
    tick(client, clock)  # a second tick finds the new keys young: nothing more
    assert count_by_alg(client) == {"RS256": 2, "ES256": 2, "Ed25519": 1}  # Ed25519: no client uses it
    with client.app.state.services.sessions() as db:
        new = {k.alg: k for k in db.scalars(select(SigningKey).where(SigningKey.replaces_kid.is_not(None)))}
    assert {alg: key.replaces_kid for alg, key in new.items()} == {"RS256": old["RS256"], "ES256": old["ES256"]}
    assert {key.kid for key in new.values()} <= published_kids(client)  # published at once...
    assert kid_of(tokens_for(client)["id_token"]) == old["RS256"]  # ...signing only later
    assert signing_kid(client, "ES256") == old["ES256"]
    clock.advance(PUBLISH_LEAD_SECONDS)
    client.app.state.services.oidc.keys.reload()
    assert kid_of(tokens_for(client)["id_token"]) == new["RS256"].kid
    assert signing_kid(client, "ES256") == new["ES256"].kid
    assert old["RS256"] in published_kids(client)  # still verifying the tokens it signed
    events = audit_events(client, "key.rotated")
    assert sorted(e.detail["alg"] for e in events) == ["ES256", "RS256"]
    assert all(e.detail["by"] == "schedule" and e.outcome == "success" for e in events)


def test_two_processes_on_one_database_make_one_successor(settings, clock):
    """The failure: every process that finds a key due making its own successor would multiply
    keys (and audit rows) with the number of processes."""
    a = rotating_app(settings, clock, 30)
    b = rotating_app(settings, clock, 30, seeded=False)
    clock.advance(30 * DAY)
    for app in (a, b, a, b):
        app.state.services.oidc.keys.reload()
    with a.state.services.sessions() as db:
        assert sorted(db.scalars(select(SigningKey.alg))) == ["ES256", "Ed25519", "RS256", "RS256"]


def test_two_processes_that_find_the_same_key_due_at_once_make_one_successor(settings, clock):
    """The race: both processes read the keys before either has written its successor; the
    database's unique guard keeps the first successor and rolls the second back."""
    apps = [rotating_app(settings, clock, 30), rotating_app(settings, clock, 30, seeded=False)]
    clock.advance(30 * DAY)
    with apps[0].state.services.sessions() as db:
        seen = published_keys(db)  # what both found, before either rotated
    for app in apps:
        services = app.state.services
        schedule = RotationSchedule(services.sessions, services.keyring, 30, TTL)
        schedule.rotate_due(seen, clock.now())
    with apps[0].state.services.sessions() as db:
        assert sorted(db.scalars(select(SigningKey.alg))) == ["ES256", "Ed25519", "RS256", "RS256"]
        assert db.scalar(select(func.count()).where(AuditEvent.kind == "key.rotated")) == 1
    for app in apps:
        app.state.services.oidc.keys.reload()  # neither process is the worse for it
        assert len(app.state.services.oidc.keys.jwks()["keys"]) == 5


def test_a_kid_never_looks_like_an_option(client, monkeypatch):
    """Defect found by a flaky CLI test: a kid is url-safe base64, and one that began with "-"
    could not be given to `idp keys revoke KID` (argparse took it for an option)."""
    from idp.oidc import signing_keys

    drawn = iter(["-starts-with-a-dash", "fine-kid-0123456"])
    monkeypatch.setattr(signing_keys, "new_secret", lambda size: next(drawn))
    services = client.app.state.services
    with services.sessions.begin() as db:
        row = signing_keys.create_signing_key(db, services.keyring, "ES256")
        assert row.kid == "fine-kid-0123456"
