"""The benchmark scenarios (issue 3): what each one sends, which load generator sends it
(wrk for single requests, bench/driver.py for multi-step flows), and the published
reference figures it is compared with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from bench import seed
from bench.http1 import basic_authorization

WRK_SCRIPTS = Path(__file__).resolve().parent / "wrk"


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    unit: str  # what one completed unit is: "req" or "flow"
    endpoint: str = ""  # key of Server.paths, for wrk scenarios
    script: str = ""  # bench/wrk/<script>.lua, for wrk scenarios
    flow: str = ""  # key of bench.driver.FLOWS, for driver scenarios
    needs_access_token: bool = False
    keycloak_per_vcpu: float | None = None  # Keycloak sizing guide, per vCPU
    peer_comparable: bool = True  # False: the peer does not do the same work (no password)

    @property
    def driven(self) -> bool:
        return bool(self.flow)


SCENARIOS = (
    Scenario("discovery", "discovery GET", "req", endpoint="discovery", script="get"),
    Scenario("jwks", "JWKS GET", "req", endpoint="jwks", script="get"),
    Scenario(
        "client_credentials",
        "client_credentials POST",
        "req",
        endpoint="token",
        script="form_post",
        keycloak_per_vcpu=120,
    ),
    Scenario("refresh", "refresh_token grant (rotating)", "req", flow="refresh", keycloak_per_vcpu=120),
    Scenario("userinfo", "userinfo GET (bearer)", "req", endpoint="userinfo", script="get", needs_access_token=True),
    Scenario(
        "introspection", "introspection POST", "req", endpoint="introspect", script="form_post", needs_access_token=True
    ),
    Scenario(
        "code_flow_password",
        "code flow + PKCE, password login (Argon2id)",
        "flow",
        flow="code_flow_password",
        keycloak_per_vcpu=15,
        peer_comparable=False,
    ),
    Scenario("code_flow_session", "code flow + PKCE, existing session (no Argon2)", "flow", flow="code_flow_session"),
)


@dataclass(frozen=True)
class WrkRequest:
    path: str
    script: Path
    env: dict[str, str]


def wrk_request(scenario: Scenario, paths: dict[str, str], host_header: str, access_token: str = "") -> WrkRequest:
    """The one request wrk repeats for this scenario against a server with these endpoint paths."""
    env = {"BENCH_HOST": host_header, "BENCH_AUTHORIZATION": "", "BENCH_BODY": ""}
    if scenario.id == "userinfo":
        env["BENCH_AUTHORIZATION"] = f"Bearer {access_token}"
    if scenario.script == "form_post":
        env["BENCH_AUTHORIZATION"] = basic_authorization(seed.CLIENT_ID, seed.CLIENT_SECRET)
        env["BENCH_BODY"] = _form_body(scenario, access_token)
    return WrkRequest(paths[scenario.endpoint], WRK_SCRIPTS / f"{scenario.script}.lua", env)


def _form_body(scenario: Scenario, access_token: str) -> str:
    if scenario.id == "client_credentials":
        return urlencode({"grant_type": "client_credentials", "scope": seed.CLIENT_CREDENTIALS_SCOPE})
    return urlencode({"token": access_token, "token_type_hint": "access_token"})
