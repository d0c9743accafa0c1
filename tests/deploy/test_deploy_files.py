"""deploy/compose.yaml, deploy/Dockerfile and deploy/idp.service, checked by reading them.

Docker and systemd cannot run here, so these tests parse the files and assert what they
wire together: which services exist and what they depend on, where each idp replica finds
PostgreSQL and Redis, that no secret is written down, health checks, a non-root user and
the sandbox options."""

from __future__ import annotations

import configparser
import ipaddress
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
UNIT = DEPLOY / "idp.service"
README = DEPLOY / "README.md"

BASE_IMAGE = "python:3.11-slim"
# ${VAR}, ${VAR:?message}, ${VAR:-default}: compose interpolation, resolved at `up` time.
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?P<rest>[^}]*)\}")
# nginx.conf's upstream servers (the file is used unchanged by compose).
UPSTREAM_SERVER = re.compile(r"^\s*server\s+(?P<host>[^\s:;]+):(?P<port>\d+)\b", re.MULTILINE)


# ---- compose.yaml ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _idp_replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run `idp serve` (the replicas), whatever they are called."""
    return {name: svc for name, svc in _services(compose).items() if _command(svc)[:1] == ["serve"]}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else list(command)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _uninterpolated(value: str) -> str:
    """The value with every ${...} replaced by a placeholder, for URL parsing."""
    return INTERPOLATION.sub("x", value)


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _healthcheck_test(service: dict[str, Any]) -> str:
    test = service.get("healthcheck", {}).get("test", [])
    return test if isinstance(test, str) else " ".join(test)


def _ipv4_addresses(service: dict[str, Any]) -> dict[str, str]:
    networks = service.get("networks", {})
    if isinstance(networks, list):
        return {}
    return {net: spec["ipv4_address"] for net, spec in networks.items() if spec and "ipv4_address" in spec}


def _subnets(compose: dict[str, Any]) -> dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = {}
    for name, spec in (compose.get("networks") or {}).items():
        for config in ((spec or {}).get("ipam") or {}).get("config", []):
            out[name] = ipaddress.ip_network(config["subnet"])
    return out


def test_compose_runs_postgres_redis_migration_two_replicas_and_nginx(compose: dict[str, Any]) -> None:
    services = _services(compose)
    assert {"postgres", "redis", "migrate", "nginx"} <= services.keys()
    assert len(_idp_replicas(compose)) >= 2, "at least two idp replicas"
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["nginx"]["image"].startswith("nginx:")


def test_postgres_and_redis_are_persistent_and_health_checked(compose: dict[str, Any]) -> None:
    services = _services(compose)
    postgres, redis = services["postgres"], services["redis"]
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in _healthcheck_test(postgres)
    assert "redis-cli" in _healthcheck_test(redis) and "ping" in _healthcheck_test(redis)
    command = _command(redis)
    assert command[command.index("--appendonly") + 1] == "yes", "Redis with AOF persistence"
    # No literal database password either.
    password = postgres["environment"]["POSTGRES_PASSWORD"]
    assert INTERPOLATION.fullmatch(password), password


def test_migration_is_one_shot_db_upgrade_after_postgres(compose: dict[str, Any]) -> None:
    migrate = _services(compose)["migrate"]
    assert _command(migrate) == ["db", "upgrade"]
    assert _depends_on(migrate).get("postgres") == "service_healthy"
    assert migrate.get("restart", "no") == "no"


@pytest.mark.parametrize(
    "key",
    ["IDP_DATABASE_URL", "IDP_REDIS_URL", "IDP_SECRET_KEY", "IDP_ISSUER", "IDP_TRUSTED_PROXIES", "IDP_CLIENTS_FILE"],
)
def test_every_idp_replica_and_the_migration_are_configured(compose: dict[str, Any], key: str) -> None:
    services = dict(_idp_replicas(compose), migrate=_services(compose)["migrate"])
    for name, service in services.items():
        assert key in _environment(service), f"{name}: {key} missing"


def test_replicas_reach_postgres_and_redis_by_service_name(compose: dict[str, Any]) -> None:
    for name, service in _idp_replicas(compose).items():
        env = _environment(service)
        database = urlsplit(_uninterpolated(env["IDP_DATABASE_URL"]))
        assert database.scheme in ("postgresql", "postgresql+psycopg"), name
        assert database.hostname == "postgres", name
        redis = urlsplit(env["IDP_REDIS_URL"])
        assert redis.scheme in ("redis", "rediss") and redis.hostname == "redis", name


def test_secret_key_is_never_a_literal(compose: dict[str, Any]) -> None:
    for name, service in dict(_idp_replicas(compose), migrate=_services(compose)["migrate"]).items():
        value = _environment(service)["IDP_SECRET_KEY"]
        match = INTERPOLATION.fullmatch(value)
        assert match and match["name"] == "IDP_SECRET_KEY", f"{name}: IDP_SECRET_KEY must be ${{IDP_SECRET_KEY:?…}}"
        assert match["rest"].startswith(":?"), f"{name}: compose must refuse to start without the key"


def test_replicas_start_after_migration_postgres_and_redis(compose: dict[str, Any]) -> None:
    for name, service in _idp_replicas(compose).items():
        deps = _depends_on(service)
        assert deps.get("migrate") == "service_completed_successfully", name
        assert deps.get("postgres") == "service_healthy", name
        assert deps.get("redis") == "service_healthy", name


def test_replicas_are_health_checked_on_readyz(compose: dict[str, Any]) -> None:
    for name, service in _idp_replicas(compose).items():
        test = _healthcheck_test(service)
        assert "http://127.0.0.1:8000/readyz" in test, name
        assert "curl" not in test and "wget" not in test, f"{name}: the slim image has neither"


def test_replicas_and_migration_are_built_from_the_dockerfile_and_hardened(compose: dict[str, Any]) -> None:
    for name, service in dict(_idp_replicas(compose), migrate=_services(compose)["migrate"]).items():
        build = service["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE, name
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert "privileged" not in service and "user" not in service, f"{name}: the image's uid 10001 is used"


def test_nginx_runs_the_repository_config_in_front_of_the_replicas(compose: dict[str, Any]) -> None:
    nginx = _services(compose)["nginx"]
    mounts = [str(v).split(":") for v in nginx["volumes"]]
    assert ["./nginx.conf", "/etc/nginx/nginx.conf", "ro"] in mounts
    assert (COMPOSE.parent / "nginx.conf").is_file()
    assert {"80:80", "443:443"} <= {str(p) for p in nginx["ports"]}
    assert set(_depends_on(nginx)) >= set(_idp_replicas(compose))
    # Only nginx publishes ports.
    for name, service in _services(compose).items():
        assert name == "nginx" or not service.get("ports"), f"{name} must not publish ports"


def test_nginx_upstreams_are_the_replicas_addresses(compose: dict[str, Any]) -> None:
    """nginx.conf is mounted unchanged, so its upstream servers must be the replicas'
    fixed addresses (or their service names) on port 8000."""
    config = (COMPOSE.parent / "nginx.conf").read_text()
    upstream = config[config.index("upstream idp {") :]
    upstream = upstream[: upstream.index("}")]
    servers = {(m["host"], m["port"]) for m in UPSTREAM_SERVER.finditer(upstream)}
    replicas = _idp_replicas(compose)
    reachable = set()
    for name, service in replicas.items():
        reachable.add((name, "8000"))
        reachable |= {(address, "8000") for address in _ipv4_addresses(service).values()}
    assert servers and servers <= reachable, f"nginx upstreams {servers} are not the replicas"
    assert len(servers) >= len(replicas)


def test_trusted_proxies_name_nginx_on_a_fixed_subnet(compose: dict[str, Any]) -> None:
    subnets = _subnets(compose)
    nginx_addresses = {net: ipaddress.ip_address(a) for net, a in _ipv4_addresses(_services(compose)["nginx"]).items()}
    assert nginx_addresses, "nginx needs a fixed address on the network it shares with idp"
    for name, service in _idp_replicas(compose).items():
        proxies = [ipaddress.ip_network(c.strip()) for c in _environment(service)["IDP_TRUSTED_PROXIES"].split(",")]
        for network_name, address in nginx_addresses.items():
            if network_name in _ipv4_addresses(service):
                assert any(address in p for p in proxies), f"{name}: nginx {address} not trusted"
        for proxy in proxies:
            assert any(proxy.subnet_of(s) for s in subnets.values() if s.version == proxy.version), (
                f"{name}: {proxy} is outside the compose networks"
            )
            assert proxy.prefixlen >= 24, f"{name}: {proxy} is wider than the nginx network"


def test_clients_file_is_mounted_read_only(compose: dict[str, Any]) -> None:
    for name, service in _idp_replicas(compose).items():
        path = _environment(service)["IDP_CLIENTS_FILE"]
        targets = {parts[1]: parts[2:] for parts in (str(v).split(":") for v in service["volumes"])}
        assert targets.get(path) == ["ro"], f"{name}: {path} must be mounted read-only"


def test_postgres_and_redis_are_not_on_the_published_network(compose: dict[str, Any]) -> None:
    networks = compose["networks"]
    for name in ("postgres", "redis"):
        attached = _services(compose)[name]["networks"]
        for network in attached:
            assert networks[network].get("internal") is True, f"{name} on non-internal network {network}"


# ---- Dockerfile ------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "dangling line continuation"
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    stages = _stages()
    assert len(stages) >= 2
    for stage in stages:
        image = stage[0][1].split()[0]
        assert image == BASE_IMAGE, image


def test_dockerfile_builder_builds_wheels_and_runtime_installs_only_them() -> None:
    builder, runtime = _stages()[0], _stages()[-1]
    builder_runs = " ".join(a for k, a in builder if k == "RUN")
    assert "pip wheel" in builder_runs and "--no-deps" in builder_runs
    runtime_runs = " ".join(a for k, a in runtime if k == "RUN")
    assert "pip install" in runtime_runs
    assert "--no-index" in runtime_runs and "--find-links=/wheels" in runtime_runs
    assert "COPY" not in {k for k, _ in runtime} or all("--from=builder" in a for k, a in runtime if k == "COPY"), (
        "the runtime stage takes nothing but the builder's wheels"
    )


def test_dockerfile_runs_as_a_fixed_non_root_user() -> None:
    runtime = _stages()[-1]
    users = [a for k, a in runtime if k == "USER"]
    assert users, "the final stage needs a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user == "10001" or user == "idp"
    runs = " ".join(a for k, a in runtime if k == "RUN")
    assert "--uid 10001" in runs


def test_dockerfile_healthcheck_exposes_and_entrypoint() -> None:
    runtime = dict(_stages()[-1])
    assert "http://127.0.0.1:8000/healthz" in runtime["HEALTHCHECK"]
    assert "curl" not in runtime["HEALTHCHECK"]
    assert runtime["EXPOSE"] == "8000"
    assert runtime["ENTRYPOINT"] == '["idp"]'
    assert "serve" in runtime["CMD"] and '"0.0.0.0"' in runtime["CMD"] and '"--workers"' in runtime["CMD"]


def test_dockerfile_bakes_in_no_secret() -> None:
    for keyword, args in _instructions():
        if keyword in ("ENV", "ARG", "LABEL"):
            assert "IDP_SECRET_KEY" not in args and "PASSWORD" not in args.upper(), (keyword, args)
    assert "IDP_SECRET_KEY=" not in DOCKERFILE.read_text()


# ---- idp.service -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_runs_idp_serve_after_db_upgrade(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    start = shlex.split(service["ExecStart"])
    assert start[:2] == ["/opt/idp/bin/idp", "serve"]
    assert start[start.index("--host") + 1] == "127.0.0.1"
    assert int(start[start.index("--workers") + 1]) >= 1
    assert shlex.split(service["ExecStartPre"]) == ["/opt/idp/bin/idp", "db", "upgrade"]
    assert service["EnvironmentFile"] == "/etc/idp/idp.env"
    settings = [line for line in UNIT.read_text().splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in settings if "IDP_SECRET_KEY" in line], "the key belongs in the EnvironmentFile"


def test_unit_runs_as_idp_not_root(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    assert service["User"] == "idp" and service["User"] not in ("root", "0")
    assert service["DynamicUser"] == "no"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("CapabilityBoundingSet", ""),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("TimeoutStopSec", "30"),
    ],
)
def test_unit_hardening(unit: configparser.ConfigParser, option: str, value: str) -> None:
    assert unit["Service"][option] == value


def test_unit_system_call_filter(unit: configparser.ConfigParser) -> None:
    # configparser (strict=False) keeps the last of repeated keys; read them all from the text.
    filters = re.findall(r"^SystemCallFilter=(.*)$", UNIT.read_text(), re.MULTILINE)
    assert "@system-service" in filters


def test_unit_is_installed_for_multi_user(unit: configparser.ConfigParser) -> None:
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["After"]


# ---- README ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "TLS",
        "IDP_SECRET_KEY",
        "pg_dump",
        "idp keys rotate",
        "Sentinel",
        "PgBouncer",
        "IDP_TRUSTED_PROXIES",
        "/readyz",
        "/healthz",
        "JSON",
    ],
)
def test_readme_checklist_covers(topic: str) -> None:
    assert topic in README.read_text()
