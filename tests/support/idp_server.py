"""One real `idp serve` for a browser suite that brings its own relying parties: a fresh
SQLite database and data directory, the clients file the suite writes (set as
IDP_CLIENTS_FILE, synced at start as an admin's deployment does), users added with the
`idp` CLI, the server on a free port of 127.0.0.1 with the issuer http://localhost:PORT.

The process handling (start, readiness on discovery, stop of the whole process group) is
tests/support/processes.py's `IdpProcess`; this module only chooses the settings."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import DISCOVERY_PATH, IdpProcess, free_port, run_cli
from tests.support.seed import PASSWORD


@dataclass(frozen=True)
class User:
    username: str
    email: str
    name: str
    password: str = PASSWORD


ALICE = User("alice", "alice@example.com", "Alice Liddell")
BOB = User("bob", "bob@example.com", "Bob Bobson")


@dataclass(frozen=True)
class LocalIdp:
    """A running idp: its issuer, the environment its CLI runs with, its log."""

    issuer: str
    port: int
    env: dict[str, str]
    process: IdpProcess

    @property
    def discovery_url(self) -> str:
        return self.issuer + DISCOVERY_PATH

    def cli(self, *args: str, stdin: str | None = None) -> str:
        """`idp <args>` as the admin runs it against this deployment; raises on failure."""
        return run_cli(self.env, *args, stdin=stdin)

    def log(self, lines: int = 60) -> str:
        return self.process.log(lines)


def sqlite_environment(workdir: Path, port: int, clients_toml: str, **extra: str) -> dict[str, str]:
    """Settings of one deployment under `workdir`: nothing IDP_* inherited from the caller,
    cheap Argon2 parameters, the clients file written as given."""
    workdir.mkdir(parents=True, exist_ok=True)
    clients_file = workdir / "clients.toml"
    clients_file.write_text(clients_toml, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update(
        IDP_ISSUER=f"http://localhost:{port}",
        IDP_DATABASE_URL=f"sqlite:///{workdir}/idp.db",
        IDP_DATA_DIR=str(workdir / "var"),
        IDP_CLIENTS_FILE=str(clients_file),
        IDP_ARGON2_TIME_COST="1",
        IDP_ARGON2_MEMORY_KIB="8192",
    )
    env.update(extra)
    return env


@contextmanager
def serving_idp(
    workdir: Path, clients_toml: str, *, users: Iterable[User] = (ALICE,), port: int | None = None, **extra: str
) -> Iterator[LocalIdp]:
    """A migrated database with `users`, then `idp serve` on `port` (a free one by default),
    ready when discovery answers; stopped (its whole process group) afterwards."""
    port = port or free_port()
    env = sqlite_environment(workdir, port, clients_toml, **extra)
    run_cli(env, "db", "upgrade")
    for user in users:
        run_cli(
            env,
            "user",
            "add",
            user.username,
            "--email",
            user.email,
            "--name",
            user.name,
            "--password-stdin",
            stdin=user.password + "\n",
        )
    process = IdpProcess(env=env, port=port, log_path=workdir / "serve.log")
    process.start()
    try:
        yield LocalIdp(issuer=env["IDP_ISSUER"], port=port, env=env, process=process)
    finally:
        process.stop()
