"""Scale-out: three `idp serve` processes (one PostgreSQL schema, one private Redis) behind
Debian's nginx running deploy/nginx.conf (text substitutions only: ports, upstreams, paths,
certificate, and the nginx per-address rate limits raised, see `nginx_config`).

Hundreds of complete, browserless code flows run concurrently through nginx: the relying
party is pyoidc (`oic`, an independent OIDC client: discovery, PKCE S256 authorization
request, token exchange, ID token verification), the "browser" an httpx client that fills
in the hosted login and consent forms. nginx's access log (with $upstream_addr added)
shows that logins start on one process and finish on another.

Then, under load: one idp process is SIGKILLed (nginx routes around it, no flow completed
before is lost, flows in flight complete or fail cleanly and succeed when the RP retries
them, never a 500), and Redis is restarted (logins in flight may fail cleanly, service
resumes, nothing durable is lost). At the end EVERY refresh token issued by a completed
flow is redeemed through nginx.

Measured flows/s through nginx with 1, 2 and 3 upstream processes are printed (-s) and
written to tests/scale/artifacts/scale-out-figures.txt; only "> 0" is asserted."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from oic.oic import Client
from oic.oic.message import (
    AccessTokenResponse,
    AuthorizationResponse,
    RegistrationResponse,
)
from oic.utils.authn.client import CLIENT_AUTHN_METHOD
from oic.utils.settings import OicClientSettings

from tests.support.nginx import adapted_config, local_rules, nginx_binary, self_signed
from tests.support.processes import (
    DISCOVERY_PATH,
    SHOP,
    SHOP_REDIRECT,
    IdpProcess,
    PrivateRedis,
    free_port,
    log_tail,
    post_form,
    prepared_environment,
    private_redis,
    run_cli,
)
from tests.support.seed import PASSWORD

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.multiprocess,
    pytest.mark.nginx,
    # pyoidc fetches a JWKS on "localhost" with certificate checks off, whatever its settings
    # say (oic/utils/keyio.py, KeyJar.add_url); everything else here verifies the test cert.
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
PROCESSES = 3
WORKERS = 20  # concurrent flows
MEASURE_FLOWS = 60  # per figure (1, 2, 3 upstreams)
LOAD_FLOWS = 200  # the clean run, and the run during which one process is killed
REDIS_FLOWS = 120
# offline_access: refresh tokens that outlive the login session. Without it idp ends them
# with the session, and its cap of 10 sessions per user evicts the older ones under load.
SCOPE = "openid profile offline_access"
STEP_TIMEOUT = 20.0
CLEAN_STATUSES = {400, 502, 503, 504}
# One user per concurrent worker: idp caps the sessions of one user (10), so 20 concurrent
# logins of a single user would evict sessions of logins still in flight.
USERS = [f"user{n:02d}" for n in range(WORKERS)]  # what a flow may fail with while a process or Redis is gone


# ---- nginx -----------------------------------------------------------------------------------


def nginx_config(work: Path, http_port: int, https_port: int, upstream_ports: list[int]) -> str:
    """deploy/nginx.conf with these substitutions only (each must match as often as stated)."""
    servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=3 fail_timeout=10s;" for port in upstream_ports)
    return adapted_config(
        [
            *local_rules(work),
            # the upstream block: the processes of this test instead of the two example servers
            (
                r"^ *server 10\.0\.0\.11:8000 max_fails=3 fail_timeout=10s;\n *server 10\.0\.0\.12:8000 "
                r"max_fails=3 fail_timeout=10s;$",
                servers,
                1,
            ),
            (r"listen 80\b", f"listen 127.0.0.1:{http_port}", 2),
            (r"listen \[::\]:80\b", "# listen [::]:80 (test: IPv4 only)", 2),
            (r"listen 443\b", f"listen 127.0.0.1:{https_port}", 2),
            (r"listen \[::\]:443\b", "# listen [::]:443 (test: IPv4 only)", 2),
            # The per-address request rates (10 r/s on /login, 50 on /token, 100 elsewhere) would
            # throttle this load, which all comes from 127.0.0.1: raised here, because this test
            # is about idp behind nginx; the zones themselves are exercised by tests/deploy.
            (r"rate=\d+r/s", "rate=100000r/s", 3),
            # Which upstream served each request, to show that one login spans processes.
            (r"ua=\"\$http_user_agent\"';", 'ua="$http_user_agent" upstream=$upstream_addr\';', 1),
        ]
    )


@dataclass
class Nginx:
    binary: str
    work: Path
    http_port: int
    https_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.work / "nginx.conf"

    @property
    def access_log(self) -> Path:
        return self.work / "logs" / "access.log"

    def command(self, *extra: str) -> list[str]:
        return [self.binary, "-p", f"{self.work}/", "-c", str(self.config_path), *extra]

    def configure(self, upstream_ports: list[int]) -> None:
        self.config_path.write_text(nginx_config(self.work, self.http_port, self.https_port, upstream_ports))
        checked = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30, check=False)
        assert checked.returncode == 0, f"nginx -t refused the configuration:\n{checked.stderr}"

    def start(self, ready: Callable[[], bool]) -> None:
        with open(self.work / "nginx.log", "wb") as log:
            self.process = subprocess.Popen(
                self.command("-g", "daemon off;"),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while not ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"nginx did not start:\n{log_tail(self.work / 'nginx.log')}\n"
                    f"{log_tail(self.work / 'logs' / 'error.log')}"
                )
            time.sleep(0.1)

    def reload(self, upstream_ports: list[int]) -> None:
        """New configuration; waits until every worker runs it (the old ones have exited)."""
        assert self.process is not None
        before = set(worker_pids(self.process.pid))
        self.configure(upstream_ports)
        done = subprocess.run(self.command("-s", "reload"), capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, f"nginx -s reload failed: {done.stderr}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            now = set(worker_pids(self.process.pid))
            if now and not (now & before):
                return
            time.sleep(0.1)
        pytest.fail(f"nginx workers not replaced 15 s after reload:\n{log_tail(self.work / 'logs' / 'error.log')}")

    def stop(self) -> None:
        if self.process is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=10)
                    break
            self.process = None


def worker_pids(master: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    except OSError:
        return []


# ---- the deployment ------------------------------------------------------------------------------


@dataclass
class Deployment:
    issuer: str
    cafile: Path
    nginx: Nginx
    idps: list[IdpProcess]
    redis: PrivateRedis

    def ports(self, count: int = PROCESSES) -> list[int]:
        return [idp.port for idp in self.idps[:count]]

    def logs(self) -> str:
        parts = [f"--- idp :{idp.port} ---\n{idp.log(15)}" for idp in self.idps]
        parts.append(f"--- nginx error.log ---\n{log_tail(self.nginx.work / 'logs' / 'error.log', 15)}")
        return "\n".join(parts)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    binary = nginx_binary()
    work = tmp_path_factory.mktemp("scale-out")
    for sub in ("logs", "temp"):
        (work / sub).mkdir()
    cafile = self_signed(work / "tls")
    nginx = Nginx(binary, work, http_port=free_port(), https_port=free_port())
    issuer = f"https://localhost:{nginx.https_port}"
    tls = ssl.create_default_context(cafile=str(cafile))

    def answers() -> bool:
        try:
            return httpx.get(issuer + DISCOVERY_PATH, verify=tls, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    with (
        private_redis(free_port(), work) as redis_server,
        prepared_environment(
            work / "idp",
            issuer_port=0,
            redis_url=redis_server.url,
            schema_prefix="idp_scale_out",
            IDP_ISSUER=issuer,
            IDP_TRUSTED_PROXIES="127.0.0.1/32",
        ) as env,
    ):
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda name: run_cli(
                        env,
                        "user",
                        "add",
                        name,
                        "--email",
                        f"{name}@example.com",
                        "--password-stdin",
                        stdin=PASSWORD + "\n",
                    ),
                    USERS,
                )
            )
        idps = []
        try:
            for _ in range(PROCESSES):  # one after the other: the first creates the signing key
                port = free_port()
                idp = IdpProcess(env=env, port=port, log_path=work / f"idp-{port}.log")
                idps.append(idp)
                idp.start()
            nginx.configure([idp.port for idp in idps])
            nginx.start(answers)
            yield Deployment(issuer, cafile, nginx, idps, redis_server)
        finally:
            nginx.stop()
            for idp in idps:
                idp.stop()


# ---- one flow: pyoidc as the RP, httpx as the browser ----------------------------------------------


class FlowFailed(Exception):
    def __init__(self, step: str, status: int | None, detail: str) -> None:
        super().__init__(f"{step}: {status if status is not None else 'no response'}: {detail}")
        self.step, self.status = step, status


@dataclass
class Outcome:
    tag: str
    tokens: dict[str, str] | None = None
    failures: list[FlowFailed] = field(default_factory=list)


def _redirect(response: httpx.Response, step: str, path: str | None = None) -> str:
    if response.status_code != 303:
        raise FlowFailed(step, response.status_code, " ".join(response.text.split())[:300])
    location = response.headers["location"]
    if path is not None and urlsplit(location).path != path:
        raise FlowFailed(step, 303, f"redirect to {location!r}, expected {path}")
    return location


def _ok(response: httpx.Response, step: str) -> httpx.Response:
    if response.status_code != 200:
        raise FlowFailed(step, response.status_code, " ".join(response.text.split())[:300])
    return response


def one_flow(deployment: Deployment, tag: str, username: str) -> dict[str, str]:
    """A complete code flow through nginx; returns the refresh token and the subject. Every
    failure is a FlowFailed naming the step and the HTTP status (None: no response)."""
    issuer = deployment.issuer
    try:
        rp = Client(
            client_id=SHOP[0],
            client_authn_method=CLIENT_AUTHN_METHOD,
            settings=OicClientSettings(verify_ssl=str(deployment.cafile), timeout=STEP_TIMEOUT),
        )
        rp.provider_config(issuer)  # discovery through nginx
    except Exception as exc:  # noqa: BLE001 - pyoidc wraps HTTP errors in several exception types
        raise FlowFailed("discovery", None, repr(exc)[:300]) from exc
    rp.store_registration_info(
        RegistrationResponse(
            client_id=SHOP[0],
            client_secret=SHOP[1],
            redirect_uris=[SHOP_REDIRECT],
            token_endpoint_auth_method="client_secret_basic",
        )
    )
    state, nonce = os.urandom(16).hex(), os.urandom(16).hex()
    pkce, code_verifier = rp.add_code_challenge()  # S256
    request = rp.construct_AuthorizationRequest(
        request_args={
            "client_id": SHOP[0],
            "response_type": "code",
            "scope": SCOPE,
            "redirect_uri": SHOP_REDIRECT,
            "state": state,
            "nonce": nonce,
            **pkce,
        }
    )
    url = request.request(rp.authorization_endpoint)

    with httpx.Client(
        verify=ssl.create_default_context(cafile=str(deployment.cafile)),
        timeout=STEP_TIMEOUT,
        follow_redirects=False,
        headers={"user-agent": tag},
    ) as browser:
        try:
            login = _redirect(browser.get(url), "GET /authorize", "/login")
            page = _ok(browser.get(urljoin(issuer, login)), "GET /login")
            hidden = post_form(page.text, "/login")["hidden"]
            posted = browser.post(f"{issuer}/login", data={**hidden, "username": username, "password": PASSWORD})
            resume = _redirect(posted, "POST /login", "/authorize/resume")
            next_hop = _redirect(browser.get(urljoin(issuer, resume)), "GET /authorize/resume")
            if not next_hop.startswith(SHOP_REDIRECT + "?"):
                if urlsplit(next_hop).path != "/consent":
                    raise FlowFailed("GET /authorize/resume", 303, f"redirect to {next_hop!r}")
                page = _ok(browser.get(urljoin(issuer, next_hop)), "GET /consent")
                form = post_form(page.text, "/consent")
                next_hop = _redirect(
                    browser.post(f"{issuer}/consent", data={**form["hidden"], "decision": "allow"}), "POST /consent"
                )
                if not next_hop.startswith(SHOP_REDIRECT + "?"):
                    raise FlowFailed("POST /consent", 303, f"redirect to {next_hop!r}")
        except httpx.HTTPError as exc:
            raise FlowFailed("browser", None, repr(exc)[:300]) from exc

    query = urlsplit(next_hop).query
    response = rp.parse_response(AuthorizationResponse, info=query, sformat="urlencoded")
    assert response["state"] == state and response["iss"] == issuer, response.to_dict()
    try:
        tokens = rp.do_access_token_request(
            state=state,
            authn_method="client_secret_basic",
            request_args={"code": response["code"], "redirect_uri": SHOP_REDIRECT, "code_verifier": code_verifier},
        )  # verifies the ID token: signature (JWKS via nginx), iss, aud, nonce
    except Exception as exc:  # noqa: BLE001
        raise FlowFailed("POST /token", _status_in(exc), repr(exc)[:300]) from exc
    if not isinstance(tokens, AccessTokenResponse) or "refresh_token" not in tokens:
        raise FlowFailed("POST /token", 200, f"not a token response with a refresh token: {tokens.to_dict()}")
    id_token = tokens["id_token"]
    assert id_token["nonce"] == nonce and id_token["iss"] == issuer and id_token["aud"] == [SHOP[0]], id_token.to_dict()
    return {"refresh_token": tokens["refresh_token"], "sub": id_token["sub"]}


def _status_in(exc: Exception) -> int | None:
    found = re.search(r"\b([45]\d\d)\b", str(exc))
    return int(found.group(1)) if found else None


def run_flows(
    deployment: Deployment,
    prefix: str,
    count: int,
    *,
    attempts: int = 1,
    retry_pause: float = 0.0,
    users: list[str] = USERS,
    during: Callable[[Callable[[], int]], None] | None = None,
) -> tuple[list[Outcome], float]:
    """`count` flows on WORKERS threads, each tried up to `attempts` times; `during` runs
    beside them, given the number of flows completed so far. Returns outcomes and seconds."""
    completed = 0
    lock = threading.Lock()

    def flow(number: int) -> Outcome:
        nonlocal completed
        outcome = Outcome(tag=f"{prefix}-{number}")
        for attempt in range(attempts):
            try:
                outcome.tokens = one_flow(deployment, f"{prefix}-{number}-{attempt}", users[number % len(users)])
                break
            except FlowFailed as failure:
                outcome.failures.append(failure)
                time.sleep(retry_pause)
        with lock:
            completed += 1
        return outcome

    def progress() -> int:
        with lock:
            return completed

    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [pool.submit(flow, n) for n in range(count)]
        if during is not None:
            during(progress)
        outcomes = [f.result() for f in futures]
    return outcomes, time.monotonic() - started


def wait_for(progress: Callable[[], int], at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while progress() < at_least:
        assert time.monotonic() < deadline, f"only {progress()} flows finished in {timeout:.0f} s"
        time.sleep(0.02)


# ---- nginx's access log ---------------------------------------------------------------------------

LOG_LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) [^"]*" (?P<status>\d{3}) .* ua="(?P<ua>[^"]*)" '
    r"upstream=(?P<upstream>.*)$"
)


@dataclass(frozen=True)
class Logged:
    method: str
    uri: str
    status: int
    ua: str
    upstream: str


def access_log(deployment: Deployment) -> list[Logged]:
    entries = []
    for line in deployment.nginx.access_log.read_text(errors="replace").splitlines():
        if found := LOG_LINE.search(line):
            entries.append(
                Logged(found["method"], found["uri"], int(found["status"]), found["ua"], found["upstream"].strip())
            )
    return entries


def server_errors(deployment: Deployment) -> list[Logged]:
    """Answers no client should ever see: every 5xx but those that mean 'retry later'."""
    return [e for e in access_log(deployment) if e.status >= 500 and e.status not in (502, 503, 504)]


def refresh_all(deployment: Deployment, refresh_tokens: list[str]) -> list[str]:
    """Redeems each refresh token once through nginx; returns the problems."""
    tls = ssl.create_default_context(cafile=str(deployment.cafile))

    def refresh(token: str) -> str | None:
        with httpx.Client(verify=tls, timeout=STEP_TIMEOUT) as backend:
            response = backend.post(
                f"{deployment.issuer}/token", auth=SHOP, data={"grant_type": "refresh_token", "refresh_token": token}
            )
        if response.status_code == 200 and response.json().get("refresh_token"):
            return None
        return f"refresh: {response.status_code} {response.text[:200]}"

    with ThreadPoolExecutor(WORKERS) as pool:
        return [p for p in pool.map(refresh, refresh_tokens) if p]


def failure_summary(outcomes: list[Outcome]) -> Counter[str]:
    return Counter(f"{f.step} -> {f.status}" for o in outcomes for f in o.failures)


# ---- the test ---------------------------------------------------------------------------------------


def test_three_processes_behind_nginx_survive_load_a_killed_process_and_a_redis_restart(deployment: Deployment) -> None:
    figures: dict[int, float] = {}
    issued: list[str] = []  # every refresh token a completed flow received

    # 0. one flow per user first: each user's consent to shop is given once, then remembered
    #    (concurrent FIRST consents of one user to one client can race in idp: see the report)
    outcomes, _ = run_flows(deployment, "warmup", len(USERS))
    assert all(o.tokens for o in outcomes), f"warm-up: {failure_summary(outcomes)}\n{deployment.logs()}"
    issued += [o.tokens["refresh_token"] for o in outcomes if o.tokens]

    # 1. flows/s through nginx with 1, 2 and 3 upstream processes (the same 3 processes run)
    for count in (1, 2, 3):
        deployment.nginx.reload(deployment.ports(count))
        outcomes, seconds = run_flows(deployment, f"measure{count}", MEASURE_FLOWS)
        assert all(o.tokens for o in outcomes), f"{count} upstream(s): {failure_summary(outcomes)}\n{deployment.logs()}"
        issued += [o.tokens["refresh_token"] for o in outcomes if o.tokens]
        figures[count] = MEASURE_FLOWS / seconds
    assert all(rate > 0 for rate in figures.values())

    # 2. LOAD_FLOWS concurrent flows over 3 processes, every one succeeding first time
    outcomes, seconds = run_flows(deployment, "load", LOAD_FLOWS)
    assert all(o.tokens for o in outcomes), f"clean load: {failure_summary(outcomes)}\n{deployment.logs()}"
    issued += [o.tokens["refresh_token"] for o in outcomes if o.tokens]
    load_rate = LOAD_FLOWS / seconds
    assert len({o.tokens["sub"] for o in outcomes if o.tokens}) == len(USERS)

    # ... and nginx's log shows logins started on one process and finished on another
    by_flow: dict[str, dict[str, str]] = {}
    for entry in access_log(deployment):
        if entry.ua.startswith("load-"):
            by_flow.setdefault(entry.ua, {})[f"{entry.method} {entry.uri}"] = entry.upstream
    spanning = [ua for ua, steps in by_flow.items() if steps.get("GET /authorize") != steps.get("POST /login")]
    used = {upstream for steps in by_flow.values() for upstream in steps.values()}
    assert len(by_flow) == LOAD_FLOWS and used == {f"127.0.0.1:{p}" for p in deployment.ports()}, used
    assert len(spanning) >= LOAD_FLOWS // 4, f"only {len(spanning)} flows spanned two processes"

    # 3. one process SIGKILLed while LOAD_FLOWS flows run; each may be retried once by the RP
    victim = deployment.idps[1]

    def kill_midway(progress: Callable[[], int]) -> None:
        wait_for(progress, LOAD_FLOWS // 3)
        assert victim.process is not None
        os.killpg(victim.process.pid, signal.SIGKILL)
        victim.process.wait(timeout=10)

    outcomes, _ = run_flows(deployment, "kill", LOAD_FLOWS, attempts=2, during=kill_midway)
    kill_failures = failure_summary(outcomes)
    unclean = [f for o in outcomes for f in o.failures if f.status is not None and f.status not in CLEAN_STATUSES]
    assert not unclean, f"unclean failures after the kill: {[str(f) for f in unclean]}\n{deployment.logs()}"
    assert all(o.tokens for o in outcomes), f"flows that failed twice: {kill_failures}\n{deployment.logs()}"
    issued += [o.tokens["refresh_token"] for o in outcomes if o.tokens]
    victim.process = None
    victim.start()  # back on its port; nginx takes it again once fail_timeout is over

    # 4. Redis restarted (no persistence: all login state lost) while flows run
    def restart_redis(progress: Callable[[], int]) -> None:
        wait_for(progress, REDIS_FLOWS // 4)
        deployment.redis.stop()
        time.sleep(1.0)
        deployment.redis.start()

    # While Redis is down idp answers 503 to logins (clean: the RP retries). deploy/nginx.conf
    # does not retry a 503 on another upstream nor count it against max_fails: every idp
    # shares Redis, so that would only mark them all down and turn the outage into 502s for
    # fail_timeout, on every path.
    outcomes, _ = run_flows(deployment, "redis", REDIS_FLOWS, attempts=6, retry_pause=3.0, during=restart_redis)
    redis_failures = failure_summary(outcomes)
    unclean = [f for o in outcomes for f in o.failures if f.status is not None and f.status not in CLEAN_STATUSES]
    assert not unclean, f"unclean failures around the Redis restart: {[str(f) for f in unclean]}\n{deployment.logs()}"
    assert all(o.tokens for o in outcomes), f"flows that never succeeded: {redis_failures}\n{deployment.logs()}"
    issued += [o.tokens["refresh_token"] for o in outcomes if o.tokens]

    # ... and afterwards new flows succeed at the first try
    outcomes, _ = run_flows(deployment, "after", 40)
    assert all(o.tokens for o in outcomes), f"after the Redis restart: {failure_summary(outcomes)}\n{deployment.logs()}"
    issued += [o.tokens["refresh_token"] for o in outcomes if o.tokens]

    # 5. nothing durable lost: every refresh token ever issued works, through nginx
    problems = refresh_all(deployment, issued)
    assert not problems, f"{len(problems)} of {len(issued)} refresh tokens failed: {Counter(problems)}"

    # never a 500 (or other non-retryable 5xx) anywhere, in any phase
    errors = server_errors(deployment)
    assert not errors, f"{len(errors)} server errors through nginx: {errors[:10]}\n{deployment.logs()}"

    report = "\n".join(
        [
            f"idp scale-out through nginx (deploy/nginx.conf), {WORKERS} concurrent flows, "
            f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M:%S')}",
            *(f"  {n} upstream process(es): {figures[n]:.1f} flows/s ({MEASURE_FLOWS} flows)" for n in (1, 2, 3)),
            f"  clean load, 3 processes: {load_rate:.1f} flows/s ({LOAD_FLOWS} flows, "
            f"{len(spanning)} started and finished on different processes)",
            f"  failures during the SIGKILL run (then retried successfully): {dict(kill_failures) or 'none'}",
            f"  failures around the Redis restart (then retried successfully): {dict(redis_failures) or 'none'}",
            f"  refresh tokens redeemed afterwards: {len(issued)}, all working",
        ]
    )
    print("\n" + report)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")
    (ARTIFACTS / "scale-out-figures.txt").write_text(report + "\n")
