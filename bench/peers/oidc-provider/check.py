"""Smoke check of the oidc-provider benchmark peer (server.mjs) against a running instance.

    /work/main/.venv/bin/python check.py http://localhost:3000

Proves, in order: discovery and JWKS answer; client_credentials gives a token; a full code
flow with PKCE S256 (fresh cookie jar: login + consent interactions) ends at the callback
with a code; the code gives id_token + access_token + refresh_token (ID token RS256 and its
signature verified against the JWKS); userinfo and introspection accept the access token;
a second code flow in the same session goes straight through; refresh rotates and the
rotated-out token is refused (and that reuse revokes the successor); revocation answers 200
and the revoked tokens stop working; a code is single-use. Prints one line per check and exits 1 on any failure.

Uses only httpx (+ the standard library). Never contacts the redirect URI
(http://localhost:9999/callback): redirects are followed by hand and stop there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import sys
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx

CLIENT_ID = "bench"
CLIENT_SECRET = "bench-secret-0123456789abcdefghijklmnopqrstuvwxyz"
REDIRECT_URI = "http://localhost:9999/callback"
SCOPE = "openid profile email offline_access"
FIXED_SUB = "fixed-user-sub"
AUTH = (CLIENT_ID, CLIENT_SECRET)  # httpx sends this as client_secret_basic

results: list[tuple[bool, str, str]] = []


class Abort(Exception):
    pass


def check(ok: bool, name: str, detail: str = "", fatal: bool = False) -> bool:
    results.append((ok, name, detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  -- {detail}" if detail else ""), flush=True)
    if not ok and fatal:
        raise Abort(name)
    return ok


def info(text: str) -> None:
    print(f"INFO  {text}", flush=True)


def b64u_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def verify_rs256(jwt: str, jwks: dict) -> tuple[dict, dict, str]:
    """Returns (header, claims, problem); problem is "" when the RS256 signature verifies."""
    try:
        h64, p64, s64 = jwt.split(".")
        header = json.loads(b64u_decode(h64))
        claims = json.loads(b64u_decode(p64))
    except Exception as exc:  # noqa: BLE001
        return {}, {}, f"not a JWS: {exc}"
    if header.get("alg") != "RS256":
        return header, claims, f"alg {header.get('alg')!r}"
    keys = [k for k in jwks.get("keys", []) if k.get("kid") == header.get("kid") and k.get("kty") == "RSA"]
    if not keys:
        return header, claims, f"kid {header.get('kid')!r} not in JWKS"
    n = int.from_bytes(b64u_decode(keys[0]["n"]), "big")
    e = int.from_bytes(b64u_decode(keys[0]["e"]), "big")
    k = (n.bit_length() + 7) // 8
    em = pow(int.from_bytes(b64u_decode(s64), "big"), e, n).to_bytes(k, "big")
    # EMSA-PKCS1-v1_5 with SHA-256 (RFC 8017 §9.2)
    digest_info = (
        bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(f"{h64}.{p64}".encode()).digest()
    )
    expected = b"\x00\x01" + b"\xff" * (k - len(digest_info) - 3) + b"\x00" + digest_info
    if not secrets.compare_digest(em, expected):
        return header, claims, "signature does not verify"
    return header, claims, ""


def code_flow(client: httpx.Client, meta: dict, label: str) -> tuple[dict, list[str]]:
    """Runs GET /auth ... to the callback, following redirects by hand with the client's
    cookie jar. Returns (callback query, hops) where hops are "STATUS path" strings."""
    verifier = b64u(secrets.token_bytes(32))
    challenge = b64u(hashlib.sha256(verifier.encode()).digest())
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    url = (
        meta["authorization_endpoint"]
        + "?"
        + urlencode(
            {
                "response_type": "code",
                "client_id": CLIENT_ID,
                "redirect_uri": REDIRECT_URI,
                "scope": SCOPE,
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
    )
    hops: list[str] = []
    for _ in range(12):
        r = client.get(url)
        if r.status_code not in (302, 303):
            check(
                False,
                f"{label}: redirect chain",
                f"GET {urlsplit(url).path} -> {r.status_code} {r.text[:200]}",
                fatal=True,
            )
        location = urljoin(url, r.headers["location"])
        hops.append(f"{r.status_code} {urlsplit(url).path} -> {urlsplit(location).path}")
        if location.startswith(REDIRECT_URI):
            query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
            query["_verifier"], query["_nonce"] = verifier, nonce
            check(
                query.get("state") == state and "code" in query,
                f"{label}: reached callback with code",
                " | ".join(hops),
                fatal=True,
            )
            check(query.get("iss") == meta["issuer"], f"{label}: callback iss parameter", query.get("iss", "missing"))
            return query, hops
        url = location
    check(False, f"{label}: redirect chain", "too many redirects: " + " | ".join(hops), fatal=True)
    raise AssertionError  # unreachable


def redeem(client: httpx.Client, meta: dict, jwks: dict, cb: dict, label: str) -> dict:
    r = client.post(
        meta["token_endpoint"],
        auth=AUTH,
        data={
            "grant_type": "authorization_code",
            "code": cb["code"],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": cb["_verifier"],
        },
    )
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    have = sorted(k for k in ("id_token", "access_token", "refresh_token") if k in body)
    check(
        r.status_code == 200 and len(have) == 3,
        f"{label}: token exchange gives id/access/refresh",
        f"{r.status_code} has {have} expires_in={body.get('expires_in')} scope={body.get('scope')!r}",
        fatal=True,
    )
    header, claims, problem = verify_rs256(body["id_token"], jwks)
    check(
        not problem
        and claims.get("iss") == meta["issuer"]
        and claims.get("aud") in (CLIENT_ID, [CLIENT_ID])
        and claims.get("sub") == FIXED_SUB
        and claims.get("nonce") == cb["_nonce"],
        f"{label}: id_token RS256 verified, iss/aud/sub/nonce",
        problem
        or f"kid={header.get('kid')} sub={claims.get('sub')} ttl={claims.get('exp', 0) - claims.get('iat', 0)}s",
    )
    return body


def introspect(client: httpx.Client, meta: dict, token: str, hint: str | None = None) -> tuple[int, dict]:
    data = {"token": token}
    if hint:
        data["token_type_hint"] = hint
    r = client.post(meta["introspection_endpoint"], auth=AUTH, data=data)
    return r.status_code, (r.json() if r.status_code == 200 else {})


def refresh(client: httpx.Client, meta: dict, rt: str) -> httpx.Response:
    return client.post(meta["token_endpoint"], auth=AUTH, data={"grant_type": "refresh_token", "refresh_token": rt})


def run(base: str) -> None:
    base = base.rstrip("/")
    with httpx.Client(follow_redirects=False, timeout=10.0) as client:
        r = client.get(f"{base}/.well-known/openid-configuration")
        check(r.status_code == 200, "discovery 200", f"{r.status_code}", fatal=True)
        meta = r.json()
        for key in (
            "authorization_endpoint",
            "token_endpoint",
            "userinfo_endpoint",
            "jwks_uri",
            "introspection_endpoint",
            "revocation_endpoint",
        ):
            check(key in meta, f"discovery has {key}", meta.get(key, "missing"), fatal=True)
        check(
            "S256" in meta.get("code_challenge_methods_supported", [])
            and "plain" not in meta.get("code_challenge_methods_supported", []),
            "discovery: PKCE S256 only",
            str(meta.get("code_challenge_methods_supported")),
        )

        r = client.get(meta["jwks_uri"])
        jwks = r.json() if r.status_code == 200 else {}
        check(
            r.status_code == 200 and any(k.get("kty") == "RSA" and "d" not in k for k in jwks.get("keys", [])),
            "jwks 200 with a public RSA key",
            f"{r.status_code} kids={[k.get('kid') for k in jwks.get('keys', [])]}",
            fatal=True,
        )

        r = client.post(
            meta["token_endpoint"], auth=AUTH, data={"grant_type": "client_credentials", "scope": "profile"}
        )
        body = r.json() if r.status_code == 200 else {}
        check(
            r.status_code == 200 and "access_token" in body and "refresh_token" not in body,
            "client_credentials 200 with access token",
            f"{r.status_code} scope={body.get('scope')!r} expires_in={body.get('expires_in')} {'' if r.status_code == 200 else r.text[:200]}",
        )
        if "access_token" in body:
            status, intro = introspect(client, meta, body["access_token"])
            check(
                status == 200 and intro.get("active") is True and intro.get("client_id") == CLIENT_ID,
                "introspection of client_credentials token active",
                f"{status} {intro}",
            )

        # Flow 1: fresh cookie jar -> login interaction, then consent interaction.
        client.cookies.clear()
        cb1, hops1 = code_flow(client, meta, "flow 1 (no session)")
        n_interactions = sum("/interaction/" in h.split(" -> ")[1] for h in hops1)
        check(n_interactions == 2, "flow 1: login + consent interactions", f"{n_interactions} interaction redirects")
        info(
            "session cookies after flow 1: "
            + ", ".join(sorted({f"{c.name} (path {c.path})" for c in client.cookies.jar}))
        )
        t1 = redeem(client, meta, jwks, cb1, "flow 1")

        r = client.get(meta["userinfo_endpoint"], headers={"Authorization": f"Bearer {t1['access_token']}"})
        ui = r.json() if r.status_code == 200 else {}
        check(
            r.status_code == 200
            and ui.get("sub") == FIXED_SUB
            and ui.get("preferred_username") == "alice"
            and ui.get("email") == "alice@example.com",
            "userinfo 200 with claims",
            f"{r.status_code} {ui or r.text[:200]}",
        )

        status, intro = introspect(client, meta, t1["access_token"], "access_token")
        check(
            status == 200 and intro.get("active") is True and intro.get("sub") == FIXED_SUB,
            "introspection 200 active true",
            f"{status} active={intro.get('active')} sub={intro.get('sub')} scope={intro.get('scope')!r}",
        )

        # Flow 2: same cookie jar, Grant still in the session -> straight through.
        cb2, hops2 = code_flow(client, meta, "flow 2 (session + grant)")
        n_interactions = sum("/interaction/" in h.split(" -> ")[1] for h in hops2)
        check(n_interactions == 0, "flow 2: no interaction (session and grant reused)", f"{len(hops2)} redirect(s)")
        t2 = redeem(client, meta, jwks, cb2, "flow 2")

        # Refresh with rotation, then reuse of the old one.
        r = refresh(client, meta, t1["refresh_token"])
        body = r.json() if r.status_code == 200 else {}
        check(
            r.status_code == 200
            and body.get("refresh_token")
            and body["refresh_token"] != t1["refresh_token"]
            and body.get("access_token"),
            "refresh rotates (new refresh token)",
            f"{r.status_code} new_rt={'yes' if body.get('refresh_token') else 'no'} id_token={'yes' if body.get('id_token') else 'no'}",
            fatal=True,
        )
        rotated = body
        r = client.get(meta["userinfo_endpoint"], headers={"Authorization": f"Bearer {rotated['access_token']}"})
        check(r.status_code == 200, "refreshed access token works at userinfo", f"{r.status_code}")
        r = refresh(client, meta, t1["refresh_token"])
        check(
            r.status_code == 400 and r.json().get("error") == "invalid_grant",
            "old refresh token refused",
            f"{r.status_code} {r.text[:120]}",
        )
        status, intro = introspect(client, meta, rotated["refresh_token"], "refresh_token")
        check(
            status == 200 and intro.get("active") is False,
            "reuse revoked the rotated successor too",
            f"active={intro.get('active')}",
        )
        status, intro = introspect(client, meta, t2["access_token"], "access_token")
        info(
            f"flow 2's access token after the reuse: active={intro.get('active')} "
            "(the peer revokes the whole Grant, shared by every flow of this session)"
        )

        # Flow 3: same session, but its Grant was destroyed by the reuse -> consent only.
        cb3, hops3 = code_flow(client, meta, "flow 3 (session, grant revoked)")
        n_interactions = sum("/interaction/" in h.split(" -> ")[1] for h in hops3)
        check(n_interactions == 1, "flow 3: consent interaction only", f"{n_interactions} interaction redirect(s)")
        t3 = redeem(client, meta, jwks, cb3, "flow 3")

        r = client.post(
            meta["revocation_endpoint"],
            auth=AUTH,
            data={"token": t3["access_token"], "token_type_hint": "access_token"},
        )
        check(r.status_code == 200, "revocation 200 (access token)", f"{r.status_code} {r.text[:120]}")
        status, intro = introspect(client, meta, t3["access_token"])
        check(intro.get("active") is False, "revoked access token is inactive", f"active={intro.get('active')}")
        r = client.get(meta["userinfo_endpoint"], headers={"Authorization": f"Bearer {t3['access_token']}"})
        check(r.status_code == 401, "revoked access token refused at userinfo", f"{r.status_code}")
        r = client.post(
            meta["revocation_endpoint"],
            auth=AUTH,
            data={"token": t3["refresh_token"], "token_type_hint": "refresh_token"},
        )
        check(r.status_code == 200, "revocation 200 (refresh token)", f"{r.status_code} {r.text[:120]}")
        r = refresh(client, meta, t3["refresh_token"])
        check(r.status_code == 400, "revoked refresh token refused", f"{r.status_code} {r.text[:120]}")

        r = client.post(
            meta["token_endpoint"],
            auth=AUTH,
            data={
                "grant_type": "authorization_code",
                "code": cb3["code"],
                "redirect_uri": REDIRECT_URI,
                "code_verifier": cb3["_verifier"],
            },
        )
        check(
            r.status_code == 400 and r.json().get("error") == "invalid_grant",
            "authorization code is single-use",
            f"{r.status_code} {r.text[:120]}",
        )

        info("redirects, flow 1 (no session): " + " | ".join(hops1))
        info("redirects, flow 2 (session + grant): " + " | ".join(hops2))
        info("redirects, flow 3 (session, no grant): " + " | ".join(hops3))


def main() -> int:
    base = sys.argv[1] if len(sys.argv) > 1 else "http://localhost:3000"
    try:
        run(base)
    except Abort:
        pass
    except httpx.HTTPError as exc:
        check(False, "transport", repr(exc))
    failed = [name for ok, name, _ in results if not ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
