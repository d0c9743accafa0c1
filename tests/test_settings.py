"""Settings (DESIGN.md §3): IDP_* variables over the TOML file named by IDP_CONFIG; a bad value
stops start-up with a message naming the setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from idp.settings import (
    Settings,
    SettingsError,
    find_issuer_port_mismatch,
    load_settings,
)

SECRET = "k3Jq9vX2mN7pL4sD8fG1hJ6wE0yU5iO3"  # 32 characters
PUBLIC = {"IDP_ISSUER": "https://id.example.com", "IDP_SECRET_KEY": SECRET}


def test_defaults_serve_a_development_instance_on_localhost() -> None:
    settings = load_settings(environ={})

    assert settings.issuer == "http://localhost:8000"
    assert settings.database_url == "sqlite:///var/idp.db"
    assert settings.redis_url == ""
    assert settings.secret_key == ""  # generated into data_dir on first start
    assert settings.clients_file == ""
    assert settings.trusted_proxies == ()
    assert settings.data_dir == "var"
    assert settings.code_ttl_seconds == 60
    assert settings.max_concurrent_hashes == (os.cpu_count() or 1)
    assert settings.issuer_is_local and not settings.secure_cookies


def test_load_settings_ignores_variables_outside_the_environ_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDP_CODE_TTL_SECONDS", "5")
    assert load_settings(environ={}).code_ttl_seconds == 60


ACCEPTED = [
    pytest.param(
        {"IDP_ISSUER": "http://127.0.0.1:8000"},
        "issuer",
        "http://127.0.0.1:8000",
        id="accepts http on 127.0.0.1 without a secret key",
    ),
    pytest.param(
        {"IDP_ISSUER": "http://[::1]:8000"},
        "issuer",
        "http://[::1]:8000",
        id="accepts http on [::1] without a secret key",
    ),
    pytest.param(
        {**PUBLIC, "IDP_ISSUER": "https://id.example.com/tenant"},
        "issuer",
        "https://id.example.com/tenant",
        id="accepts an https issuer with a path",
    ),
    pytest.param(PUBLIC, "secret_key", SECRET, id="accepts a 32-character secret key"),
    pytest.param({"IDP_CODE_TTL_SECONDS": "1"}, "code_ttl_seconds", 1, id="accepts a 1 second code lifetime"),
    pytest.param(
        {"IDP_CODE_TTL_SECONDS": " 600 "},
        "code_ttl_seconds",
        600,
        id="accepts a 600 second code lifetime with spaces around",
    ),
    pytest.param(
        {"IDP_DATABASE_URL": "postgresql+psycopg://idp:pw@db/idp"},
        "database_url",
        "postgresql+psycopg://idp:pw@db/idp",
        id="accepts a PostgreSQL URL",
    ),
    pytest.param(
        {"IDP_DATABASE_URL": "sqlite:////srv/idp/idp.db"},
        "database_url",
        "sqlite:////srv/idp/idp.db",
        id="accepts an absolute SQLite path",
    ),
    pytest.param(
        {"IDP_REDIS_URL": "rediss://cache:6380/0"}, "redis_url", "rediss://cache:6380/0", id="accepts a TLS Redis URL"
    ),
    pytest.param(
        {"IDP_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1 ,::1/128"},
        "trusted_proxies",
        ("10.0.0.0/8", "192.168.1.1", "::1/128"),
        id="accepts comma-separated CIDRs and addresses",
    ),
    pytest.param({"IDP_TRUSTED_PROXIES": ""}, "trusted_proxies", (), id="reads an empty proxy list as none"),
    pytest.param(
        {"IDP_OUTBOUND_ALLOWED_NETWORKS": "10.0.0.0/8, 203.0.113.0/24"},
        "outbound_allowed_networks",
        ("10.0.0.0/8", "203.0.113.0/24"),
        id="accepts comma-separated outbound networks",
    ),
    pytest.param(
        {"IDP_OUTBOUND_ALLOWED_NETWORKS": ""},
        "outbound_allowed_networks",
        (),
        id="reads an empty outbound list as no outbound calls",
    ),
]


@pytest.mark.parametrize(("environ", "name", "expected"), ACCEPTED)
def test_good_values_are_accepted(environ: dict[str, str], name: str, expected: object) -> None:
    assert getattr(load_settings(environ=environ), name) == expected


REFUSED = [
    pytest.param({"IDP_CODE_TTL_SECONDS": "0"}, "IDP_CODE_TTL_SECONDS", id="refuses a 0 second code lifetime"),
    pytest.param({"IDP_CODE_TTL_SECONDS": "601"}, "IDP_CODE_TTL_SECONDS", id="refuses a 601 second code lifetime"),
    pytest.param(
        {"IDP_CODE_TTL_SECONDS": "abc"}, "IDP_CODE_TTL_SECONDS", id="refuses a code lifetime that is not a number"
    ),
    pytest.param({"IDP_CODE_TTL_SECONDS": "60.5"}, "IDP_CODE_TTL_SECONDS", id="refuses a fractional code lifetime"),
    pytest.param({"IDP_CODE_TTL_SECONDS": ""}, "IDP_CODE_TTL_SECONDS", id="refuses an empty code lifetime"),
    pytest.param({"IDP_ARGON2_MEMORY_KIB": "1024"}, "IDP_ARGON2_MEMORY_KIB", id="refuses too little Argon2 memory"),
    pytest.param(
        {"IDP_REFRESH_TOKEN_TTL_SECONDS": "7200", "IDP_REFRESH_TOKEN_ABSOLUTE_TTL_SECONDS": "3600"},
        "IDP_REFRESH_TOKEN_ABSOLUTE_TTL_SECONDS",
        id="refuses an absolute refresh lifetime below the idle one",
    ),
    pytest.param(
        {"IDP_ISSUER": "id.example.com", "IDP_SECRET_KEY": SECRET},
        "IDP_ISSUER",
        id="refuses an issuer without a scheme",
    ),
    pytest.param({"IDP_ISSUER": "localhost:8000"}, "IDP_ISSUER", id="refuses localhost:8000 without a scheme"),
    pytest.param(
        {"IDP_ISSUER": "ftp://id.example.com", "IDP_SECRET_KEY": SECRET}, "IDP_ISSUER", id="refuses an ftp issuer"
    ),
    pytest.param(
        {"IDP_ISSUER": "https://id.example.com/", "IDP_SECRET_KEY": SECRET},
        "IDP_ISSUER",
        id="refuses an issuer with a trailing slash",
    ),
    pytest.param(
        {"IDP_ISSUER": "http://localhost:8000/"}, "IDP_ISSUER", id="refuses a localhost issuer with a trailing slash"
    ),
    pytest.param(
        {"IDP_ISSUER": "https://id.example.com?tenant=a", "IDP_SECRET_KEY": SECRET},
        "IDP_ISSUER",
        id="refuses an issuer with a query",
    ),
    pytest.param(
        {"IDP_ISSUER": "https://id.example.com#top", "IDP_SECRET_KEY": SECRET},
        "IDP_ISSUER",
        id="refuses an issuer with a fragment",
    ),
    pytest.param(
        {"IDP_ISSUER": "https://id.example.com:99999", "IDP_SECRET_KEY": SECRET},
        "IDP_ISSUER",
        id="refuses an issuer whose port is out of range",
    ),
    pytest.param(
        {"IDP_ISSUER": "http://id.example.com", "IDP_SECRET_KEY": SECRET},
        "IDP_ISSUER",
        id="refuses http for a host other than localhost",
    ),
    pytest.param(
        {"IDP_ISSUER": "http://localhost.example.com", "IDP_SECRET_KEY": SECRET},
        "IDP_ISSUER",
        id="refuses http for a host that only starts with localhost",
    ),
    pytest.param({**PUBLIC, "IDP_SECRET_KEY": SECRET[:31]}, "IDP_SECRET_KEY", id="refuses a 31-character secret key"),
    pytest.param({"IDP_SECRET_KEY": "short"}, "IDP_SECRET_KEY", id="refuses a short secret key even on localhost"),
    pytest.param(
        {"IDP_ISSUER": "https://id.example.com"},
        "IDP_SECRET_KEY",
        id="refuses a public https issuer without a secret key",
    ),
    pytest.param({"IDP_TRUSTED_PROXIES": "10.0.0.0/33"}, "IDP_TRUSTED_PROXIES", id="refuses a /33 prefix"),
    pytest.param(
        {"IDP_TRUSTED_PROXIES": "10.0.0.0/8,proxy.internal"},
        "IDP_TRUSTED_PROXIES",
        id="refuses a host name among the proxies",
    ),
    pytest.param({"IDP_TRUSTED_PROXIES": "300.1.2.3"}, "IDP_TRUSTED_PROXIES", id="refuses an impossible address"),
    pytest.param(
        {"IDP_OUTBOUND_ALLOWED_NETWORKS": "10.0.0.0/8,rp.internal"},
        "IDP_OUTBOUND_ALLOWED_NETWORKS",
        id="refuses a host name among the outbound networks",
    ),
    pytest.param({"IDP_DATABASE_URL": "mysql://idp:pw@db/idp"}, "IDP_DATABASE_URL", id="refuses MySQL"),
    pytest.param({"IDP_DATABASE_URL": "var/idp.db"}, "IDP_DATABASE_URL", id="refuses a bare path as database URL"),
    pytest.param({"IDP_REDIS_URL": "http://cache:6379"}, "IDP_REDIS_URL", id="refuses an http Redis URL"),
    pytest.param({"IDP_REDIS_URL": "cache:6379"}, "IDP_REDIS_URL", id="refuses a Redis address without a scheme"),
]


@pytest.mark.parametrize(("environ", "named"), REFUSED)
def test_a_bad_value_stops_with_a_message_naming_the_setting(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(environ=environ)

    message = str(refused.value)
    assert message.startswith(f"{named}:"), message
    assert "\n" not in message
    assert SECRET not in message


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "idp.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


CONFIG_FILE = f"""\
issuer = "https://id.example.com"
secret_key = "{SECRET}"
database_url = "postgresql+psycopg://idp:pw@db/idp"
code_ttl_seconds = 120
trusted_proxies = ["10.0.0.0/8", "fd00::/8"]
"""


def test_the_config_file_named_by_idp_config_is_read(tmp_path: Path) -> None:
    settings = load_settings(environ={"IDP_CONFIG": write_config(tmp_path, CONFIG_FILE)})

    assert settings.issuer == "https://id.example.com"
    assert settings.secret_key == SECRET
    assert settings.database_url == "postgresql+psycopg://idp:pw@db/idp"
    assert settings.code_ttl_seconds == 120
    assert settings.trusted_proxies == ("10.0.0.0/8", "fd00::/8")
    assert settings.redis_url == ""  # not in the file: the default


def test_environment_variables_override_the_config_file(tmp_path: Path) -> None:
    settings = load_settings(
        environ={
            "IDP_CONFIG": write_config(tmp_path, CONFIG_FILE),
            "IDP_CODE_TTL_SECONDS": "30",
            "IDP_ISSUER": "https://login.example.org",
            "IDP_TRUSTED_PROXIES": "192.0.2.0/24",
        }
    )

    assert settings.code_ttl_seconds == 30
    assert settings.issuer == "https://login.example.org"
    assert settings.trusted_proxies == ("192.0.2.0/24",)
    assert settings.secret_key == SECRET  # still from the file


def test_an_environment_variable_can_fix_a_bad_value_in_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "code_ttl_seconds = 0\n")
    assert load_settings(environ={"IDP_CONFIG": path, "IDP_CODE_TTL_SECONDS": "90"}).code_ttl_seconds == 90


BAD_CONFIG_FILES = [
    pytest.param("code_ttl = 120\n", ["IDP_CONFIG", "code_ttl"], id="refuses an unknown key, naming it"),
    pytest.param(
        'IDP_ISSUER = "https://id.example.com"\n',
        ["IDP_CONFIG", "IDP_ISSUER"],
        id="refuses environment-style names in the file",
    ),
    pytest.param("code_ttl_seconds = 0\n", ["IDP_CODE_TTL_SECONDS"], id="refuses an out-of-range value"),
    pytest.param('code_ttl_seconds = "soon"\n', ["IDP_CODE_TTL_SECONDS"], id="refuses a string for a number"),
    pytest.param("code_ttl_seconds = true\n", ["IDP_CODE_TTL_SECONDS"], id="refuses a boolean for a number"),
    pytest.param("issuer = 8000\n", ["IDP_ISSUER"], id="refuses a number for a URL"),
    pytest.param('issuer = "http://id.example.com"\n', ["IDP_ISSUER"], id="refuses an http issuer from the file"),
    pytest.param("code_ttl_seconds = \n", ["IDP_CONFIG"], id="refuses a file that is not TOML"),
]


@pytest.mark.parametrize(("text", "named"), BAD_CONFIG_FILES)
def test_a_bad_config_file_stops_with_a_message_naming_the_setting(tmp_path: Path, text: str, named: list[str]) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(environ={"IDP_CONFIG": write_config(tmp_path, text)})

    for fragment in named:
        assert fragment in str(refused.value)


def test_a_missing_config_file_is_an_error_naming_idp_config(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^IDP_CONFIG\b"):
        load_settings(environ={"IDP_CONFIG": str(tmp_path / "missing.toml")})


@pytest.mark.parametrize("show", [repr, str], ids=["repr", "str"])
def test_the_secret_key_is_never_shown(show: object) -> None:
    settings = load_settings(environ=PUBLIC)
    assert callable(show)
    shown = show(settings)
    assert SECRET not in shown
    assert "secret_key" not in shown


@pytest.mark.parametrize(
    ("environ", "address", "allowed"),
    [
        pytest.param({}, "10.1.2.3", True, id="private networks by default"),
        pytest.param({}, "fd12::1", True, id="unique local IPv6 by default"),
        pytest.param({}, "203.0.113.9", False, id="no public address by default"),
        pytest.param({}, "169.254.169.254", False, id="never the metadata address by default"),
        pytest.param({}, "127.0.0.1", True, id="loopback when the issuer is localhost"),
        pytest.param(PUBLIC, "127.0.0.1", False, id="no loopback for a public issuer"),
        pytest.param({**PUBLIC, "IDP_OUTBOUND_ALLOWED_NETWORKS": ""}, "10.1.2.3", False, id="empty: nothing"),
    ],
)
def test_outbound_calls_go_to_private_networks_and_loopback_only_for_a_localhost_issuer(
    environ: dict[str, str], address: str, allowed: bool
) -> None:
    from idp.app import outbound_of

    assert outbound_of(load_settings(environ=environ)).policy.allows(address) is allowed


def test_settings_are_frozen() -> None:
    settings = load_settings(environ={})
    with pytest.raises(AttributeError):
        settings.issuer = "https://evil.example"  # type: ignore[misc]
    assert isinstance(settings, Settings)


# the issuer and the port `idp serve` listens on


def test_without_idp_issuer_the_issuer_is_localhost_on_the_served_port() -> None:
    assert load_settings(environ={}, serve_port=8299).issuer == "http://localhost:8299"
    assert load_settings(environ={}, serve_port=8000).issuer == "http://localhost:8000"
    assert load_settings(environ={}).issuer == "http://localhost:8000"  # callers that serve nothing


@pytest.mark.parametrize(
    ("environ", "overrides"),
    [
        pytest.param({"IDP_ISSUER": "http://localhost:8000"}, {}, id="IDP_ISSUER"),
        pytest.param({}, {"issuer": "http://localhost:8000"}, id="an issuer override"),
    ],
)
def test_an_issuer_that_is_set_is_used_as_given_whatever_the_port(
    environ: dict[str, str], overrides: dict[str, str]
) -> None:
    assert load_settings(environ=environ, serve_port=8299, **overrides).issuer == "http://localhost:8000"


def test_an_issuer_in_the_config_file_is_used_as_given_whatever_the_port(tmp_path: Path) -> None:
    settings = load_settings(environ={"IDP_CONFIG": write_config(tmp_path, CONFIG_FILE)}, serve_port=8299)
    assert settings.issuer == "https://id.example.com"


def test_serving_on_port_0_without_idp_issuer_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"^IDP_ISSUER: must be set to serve on --port 0"):
        load_settings(environ={}, serve_port=0)
    assert (
        load_settings(environ={"IDP_ISSUER": "http://localhost:8000"}, serve_port=0).issuer == "http://localhost:8000"
    )


def test_an_empty_idp_issuer_is_refused_not_taken_for_unset() -> None:
    with pytest.raises(SettingsError, match=r"^IDP_ISSUER:"):
        load_settings(environ={"IDP_ISSUER": ""}, serve_port=8299)


PORT_MISMATCHES = [
    pytest.param("http://localhost:8000", 8299, True, id="warns for localhost on another port"),
    pytest.param("http://127.0.0.1:8000", 8299, True, id="warns for 127.0.0.1 on another port"),
    pytest.param("http://localhost", 8000, True, id="warns for localhost without a port (80)"),
    pytest.param("http://localhost:8299", 8299, False, id="silent for localhost on the served port"),
    pytest.param("http://localhost:80", 80, False, id="silent for port 80 served on port 80"),
    pytest.param("https://localhost:8443", 8000, False, id="silent for https: a TLS proxy must be in front"),
    pytest.param("https://id.example.com", 8000, False, id="silent for a public issuer"),
    pytest.param("http://localhost:8000", 0, False, id="silent when the system picks the port"),
]


@pytest.mark.parametrize(("issuer", "served_port", "warns"), PORT_MISMATCHES)
def test_a_localhost_issuer_on_another_port_than_the_served_one_gets_a_warning(
    issuer: str, served_port: int, warns: bool
) -> None:
    warning = find_issuer_port_mismatch(issuer, served_port)
    assert (warning is not None) == warns
    if warning:
        assert issuer in warning and str(served_port) in warning and "\n" not in warning
