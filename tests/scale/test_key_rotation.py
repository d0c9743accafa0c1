"""Signing-key rotation across processes: two `idp serve` processes (A, B) on one PostgreSQL
schema and one Redis, and `idp keys rotate --signs-in SIGNS_IN` run on its own (as from
another host), with no restart and nothing said to A or B. It rotates the key of each
algorithm (RS256, ES256, Ed25519; JWKS also names the Ed25519 key "EdDSA"); each new key is
published first and signs only SIGNS_IN seconds later (idp/oidc/signing_keys.py; the default
lead is PUBLISH_LEAD_SECONDS, shortened here to keep the test short). The ID tokens followed
here are the RS256 ones of the default client; tests/oidc/test_id_token_algs.py signs with
the others:

- Before, each process's JWKS holds one key per algorithm, the same on both.
- Each process serves every new kid in its JWKS (the discovery document's jwks_uri) within
  REFRESH_SECONDS + 2 s of the rotation (idp/app.py: the background refresher reloads
  the keys every REFRESH_SECONDS; 2 s of slack for a loaded machine), and never stops
  publishing the old kids meanwhile.
- Until SIGNS_IN has passed, both processes still sign with the old key, so no token carries
  a kid that some process's JWKS lacks; `idp keys list` shows the new key as next.
- Each process signs with the new key within SIGNS_IN + REFRESH_SECONDS + 2 s.
- ID tokens issued afterwards by A and by B (refresh and authorization code grants) carry
  the new kid in their JOSE header and verify against either process's JWKS.
- An ID token issued before the rotation (old kid) still verifies against the JWKS
  fetched after it, on both processes.
- `idp keys list` shows, for each algorithm, the new key active and the old one retired,
  published at least until the pre-rotation ID token expires; JWKS then holds two keys per
  algorithm.

Verified with PyJWT (the key picked by the header's kid from a JWKS snapshot) and with
joserfc (ScriptedRP.verify_id_token), two independent JOSE implementations.

The times from the rotation to each process serving, then signing with, the new key are
printed with -s."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt as pyjwt
import pytest

from idp.app import REFRESH_SECONDS
from tests.support.processes import (
    DISCOVERY_PATH,
    IdpProcess,
    ScriptedRP,
    run_cli,
    two_processes,
)

pytestmark = [pytest.mark.postgres, pytest.mark.multiprocess]

PICKUP_BOUND_SECONDS = REFRESH_SECONDS + 2.0
SIGNS_IN = int(2 * REFRESH_SECONDS + 2)  # after every process has published the key
SWITCH_BOUND_SECONDS = SIGNS_IN + REFRESH_SECONDS + 2.0
POLL_SECONDS = 0.05


@dataclass
class Deployment:
    env: dict[str, str]
    a: IdpProcess
    b: IdpProcess


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with two_processes(tmp_path_factory.mktemp("key-rotation")) as (env, a, b):
        yield Deployment(env, a, b)


def jwks_path(http: httpx.Client, base: str) -> str:
    discovery = http.get(f"{base}{DISCOVERY_PATH}")
    assert discovery.status_code == 200, f"discovery on {base}: {discovery.status_code}"
    return urlsplit(discovery.json()["jwks_uri"]).path


def fetch_jwks(http: httpx.Client, base: str, path: str) -> dict[str, Any]:
    response = http.get(f"{base}{path}")
    assert response.status_code == 200, f"GET {base}{path}: {response.status_code} {response.text[:300]}"
    document: dict[str, Any] = response.json()
    return document


ALGS = ("RS256", "ES256", "Ed25519", "EdDSA")  # as JWKS names them; EdDSA is the Ed25519 key


def kids_of(jwks: dict[str, Any], alg: str = "RS256") -> list[str]:
    return [key["kid"] for key in jwks["keys"] if key["alg"] == alg]


def all_kids_of(jwks: dict[str, Any]) -> list[str]:
    return [key["kid"] for key in jwks["keys"]]


def header_kid(token: str) -> str:
    header = pyjwt.get_unverified_header(token)
    assert header.get("alg") == "RS256", header
    return str(header["kid"])


def verify(token: str, jwks: dict[str, Any], issuer: str) -> dict[str, Any]:
    """PyJWT: the key named by the token's kid in this JWKS, signature and claims checked."""
    kid = header_kid(token)
    assert kid in kids_of(jwks), f"kid {kid} not among the RS256 keys of the JWKS {kids_of(jwks)}"
    key = pyjwt.PyJWKSet.from_dict(jwks)[kid]
    claims: dict[str, Any] = pyjwt.decode(token, key.key, algorithms=["RS256"], audience="shop", issuer=issuer)
    return claims


def test_a_rotation_reaches_every_process_and_old_tokens_still_verify(deployment: Deployment) -> None:
    env, a, b = deployment.env, deployment.a, deployment.b
    processes = {"A": a, "B": b}
    issuer = env["IDP_ISSUER"]
    with ScriptedRP(issuer=issuer) as rp, httpx.Client(timeout=10) as http:
        path = jwks_path(http, a.url)
        assert jwks_path(http, b.url) == path

        # -- before: one key per algorithm, the same on both, and the RS256 one signs the ID tokens
        before = {name: fetch_jwks(http, p.url, path) for name, p in processes.items()}
        for alg in ALGS:
            assert len(kids_of(before["A"], alg)) == 1 and kids_of(before["A"], alg) == kids_of(before["B"], alg), (
                f"{alg} keys in JWKS before the rotation: {before}"
            )
        old_kid = kids_of(before["A"])[0]
        old_kids = set(all_kids_of(before["A"]))
        old = rp.full_login(authorize_on=a.url, login_on=b.url, resume_on=a.url, token_on=b.url)
        assert header_kid(old["id_token"]) == old_kid
        old_claims = verify(old["id_token"], fetch_jwks(http, a.url, path), issuer)

        # -- the rotation, by the CLI on its own: neither process is told
        started_at = time.monotonic()
        output = run_cli(env, "keys", "rotate", "--signs-in", str(SIGNS_IN))
        rotated_at = time.monotonic()  # the transaction committed before the command returned
        found = dict(re.findall(r"^new (\S+) signing key (\S+): published now, signs from ", output, re.MULTILINE))
        assert found.keys() == {"RS256", "ES256", "Ed25519"}, f"`idp keys rotate` printed: {output!r}"
        new_kid = found["RS256"]
        assert new_kid != old_kid
        new_kids = set(found.values()) | {f"{found['Ed25519']}.EdDSA"}  # the EdDSA entry of the new Ed25519 key

        # -- each process picks it up by itself, and keeps the old kid published throughout
        picked_up: dict[str, float] = {}
        deadline = rotated_at + PICKUP_BOUND_SECONDS + 10  # poll past the bound, to say how late
        while len(picked_up) < len(processes) and time.monotonic() < deadline:
            for name, process in processes.items():
                if name in picked_up:
                    continue
                served = set(all_kids_of(fetch_jwks(http, process.url, path)))
                assert old_kids <= served, f"{name} stopped publishing an old kid {old_kids - served}: {served}"
                if new_kids <= served:
                    picked_up[name] = time.monotonic() - rotated_at
            time.sleep(POLL_SECONDS)
        print(
            f"\nnew kid served {', '.join(f'by {n} after {s:.2f} s' for n, s in sorted(picked_up.items()))} "
            f"(bound {PICKUP_BOUND_SECONDS:.1f} s)"
        )
        for name in processes:
            assert name in picked_up, (
                f"{name} did not serve the new kids {new_kids} within {PICKUP_BOUND_SECONDS + 10:.0f} s"
            )
            assert picked_up[name] <= PICKUP_BOUND_SECONDS, (
                f"{name} served the new kid {picked_up[name]:.2f} s after the rotation (bound {PICKUP_BOUND_SECONDS:.1f} s)"
            )

        # -- published, not yet signing: both still sign with the old key, and the CLI says what comes
        refresh_token = old["refresh_token"]
        for name, process in processes.items():
            refreshed = rp.refresh(process.url, refresh_token)
            assert refreshed.status_code == 200, f"refresh on {name}: {refreshed.status_code} {refreshed.text}"
            refresh_token = refreshed.json()["refresh_token"]
            if time.monotonic() - started_at < SIGNS_IN:  # the new key cannot sign yet
                assert header_kid(refreshed.json()["id_token"]) == old_kid, f"{name} signed with the new key early"
        if time.monotonic() - started_at < SIGNS_IN - 1:
            window = {
                row.split("\t")[0]: row.split("\t")[3] for row in run_cli(env, "keys", "list").splitlines() if row
            }
            for kid in found.values():
                assert window[kid].startswith("next, published, signs from "), window
            for kid in old_kids & window.keys():  # (the EdDSA entry is no row of its own)
                assert window[kid].startswith("active until "), window

        # -- then each process switches by itself, not before SIGNS_IN, within its bound
        switched: dict[str, float] = {}
        while len(switched) < len(processes) and time.monotonic() < rotated_at + SWITCH_BOUND_SECONDS + 10:
            for name, process in processes.items():
                if name in switched:
                    continue
                refreshed = rp.refresh(process.url, refresh_token)
                assert refreshed.status_code == 200, f"refresh on {name}: {refreshed.status_code} {refreshed.text}"
                refresh_token = refreshed.json()["refresh_token"]
                if header_kid(refreshed.json()["id_token"]) == new_kid:
                    switched[name] = time.monotonic() - rotated_at
                    assert time.monotonic() - started_at >= SIGNS_IN - 1, f"{name} signed with the new key early"
            time.sleep(0.2)
        print(
            f"new kid signing {', '.join(f'on {n} after {s:.2f} s' for n, s in sorted(switched.items()))} "
            f"(signs in {SIGNS_IN} s, bound {SWITCH_BOUND_SECONDS:.1f} s)"
        )
        for name in processes:
            assert switched.get(name, 1e9) <= SWITCH_BOUND_SECONDS, (
                f"{name} did not sign with the new key within {SWITCH_BOUND_SECONDS:.1f} s: {switched}"
            )

        after = {name: fetch_jwks(http, p.url, path) for name, p in processes.items()}
        for name, jwks in after.items():
            assert sorted(kids_of(jwks)) == sorted([old_kid, new_kid]), (
                f"{name} JWKS after the rotation: {kids_of(jwks)}"
            )
            for alg in ALGS:
                assert len(kids_of(jwks, alg)) == 2, f"{name}: {alg} keys after the rotation: {kids_of(jwks, alg)}"
            assert set(all_kids_of(jwks)) == old_kids | new_kids, f"{name} JWKS after the rotation: {all_kids_of(jwks)}"

        # -- an ID token from before the rotation still verifies against the JWKS of after, on both
        for name, jwks in after.items():
            assert verify(old["id_token"], jwks, issuer)["sub"] == old_claims["sub"], name
            assert rp.verify_id_token(processes[name].url, old["id_token"])["sub"] == old_claims["sub"], name

        # -- ID tokens issued now, by A and by B, carry the new kid and verify on both
        issued: dict[str, str] = {}
        for name, process in processes.items():
            refreshed = rp.refresh(process.url, refresh_token)
            assert refreshed.status_code == 200, f"refresh on {name}: {refreshed.status_code} {refreshed.text}"
            body = refreshed.json()
            issued[f"refresh on {name}"] = body["id_token"]
            refresh_token = body["refresh_token"]
        issued["code on A"] = rp.full_login(authorize_on=b.url, login_on=a.url, resume_on=b.url, token_on=a.url)[
            "id_token"
        ]
        issued["code on B"] = rp.full_login(authorize_on=a.url, login_on=a.url, resume_on=a.url, token_on=b.url)[
            "id_token"
        ]
        for how, token in issued.items():
            assert header_kid(token) == new_kid, f"ID token from {how}: kid {header_kid(token)}, expected {new_kid}"
            for name, jwks in after.items():
                assert verify(token, jwks, issuer)["sub"] == old_claims["sub"], f"{how}, verified with {name}'s JWKS"
                assert rp.verify_id_token(processes[name].url, token)["sub"] == old_claims["sub"], how

        # -- the CLI's view: the new key active, the old one retired but published past its tokens' expiry
        listed = [line.split("\t") for line in run_cli(env, "keys", "list").splitlines() if line.strip()]
        assert sorted(row[1] for row in listed) == sorted(["RS256", "ES256", "Ed25519"] * 2), (
            f"`idp keys list`: {listed}"
        )
        states = {row[0]: row[3] for row in listed}
        assert set(found.values()) <= states.keys() <= old_kids | new_kids, f"`idp keys list`: {listed}"
        for kid in found.values():
            assert states[kid] == "active", f"`idp keys list`: {listed}"
        for kid in states.keys() - set(found.values()):
            retired = re.fullmatch(r"retired, published until (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)Z", states[kid])
            assert retired, f"`idp keys list`: {listed}"
            published_until = datetime.strptime(retired.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            assert published_until.timestamp() >= old_claims["exp"], (
                f"the old key {kid} is unpublished at {published_until}, before an ID token of its time expires"
            )
