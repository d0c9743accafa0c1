"""Equal work across hash parameters (issue 15, item 4). Stored hashes keep the parameters
they were made with until their user's next sign-in, so an unknown name is verified
against a dummy whose parameters are drawn from the census of the stored ones, by a keyed
hash of the name. Tested as equal *work*, not timing: every Argon2 call is instrumented and
the parameters it was given are read back from the encoded hash."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from argon2 import PasswordHasher, extract_parameters
from sqlalchemy import select, update
from starlette.applications import Starlette

from idp.cli import main
from idp.db.models import User
from idp.password_census import keep_census_fresh, refresh_census, take_census
from idp.security import passwords
from idp.security.passwords import HashParameters, PasswordHashing
from idp.users import add_user
from idp.web.services import Services

PASSWORD = "violet-harbor-tram-42"
# Tiny parameter sets: Argon2's floor is 8 KiB per lane, and these cost microseconds.
BIG = {"time_cost": 2, "memory_cost_kib": 64}
MID = {"time_cost": 1, "memory_cost_kib": 32}
SMALL = {"time_cost": 1, "memory_cost_kib": 16}


def parameters(**costs: int) -> HashParameters:
    return HashParameters.argon2id(**costs)


def fixed_digest(name: str) -> str:
    # a fixed key: every draw below is the same on every run, so the statistics never flake
    return hmac.new(b"test-dummy-key", name.encode(), hashlib.sha256).hexdigest()


@pytest.fixture
def argon2_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, HashParameters]]:
    """Every Argon2 call, as (kind, the parameters read from the hash it verified or made)."""
    calls: list[tuple[str, HashParameters]] = []
    lock = threading.Lock()
    original_verify, original_hash, original_secret = PasswordHasher.verify, PasswordHasher.hash, passwords.hash_secret

    def cost(encoded: str | bytes) -> HashParameters:
        # argon2-cffi's own parser, not the one under test
        p = extract_parameters(encoded.decode() if isinstance(encoded, bytes) else encoded)
        return HashParameters("argon2" + p.type.name.lower(), p.version, p.memory_cost, p.time_cost, p.parallelism)

    def record(kind: str, encoded: str | bytes) -> None:
        with lock:
            calls.append((kind, cost(encoded)))

    def verify(hasher: PasswordHasher, hash: str, password: str) -> Any:
        record("verify", hash)
        return original_verify(hasher, hash, password)

    def hash_(hasher: PasswordHasher, password: str, **kwargs: Any) -> str:
        made = original_hash(hasher, password, **kwargs)
        record("hash", made)
        return made

    def hash_secret(*args: Any, **kwargs: Any) -> bytes:
        made = original_secret(*args, **kwargs)
        record("hash", made)
        return made

    monkeypatch.setattr(PasswordHasher, "verify", verify)
    monkeypatch.setattr(PasswordHasher, "hash", hash_)
    monkeypatch.setattr(passwords, "hash_secret", hash_secret)
    return calls


def verifications(calls: list[tuple[str, HashParameters]]) -> list[HashParameters]:
    return [p for kind, p in calls if kind == "verify"]


@pytest.fixture
def hashing() -> Iterator[PasswordHashing]:
    hashing = PasswordHashing(max_concurrent=2, name_digest=fixed_digest, **SMALL)
    yield hashing
    hashing.close()


# (a) one name, one cost


def test_a_name_costs_the_same_on_every_try(
    hashing: PasswordHashing, argon2_calls: list[tuple[str, HashParameters]]
) -> None:
    hashing.set_census({parameters(**BIG): 5, parameters(**MID): 3, parameters(**SMALL): 2})
    names = [f"nobody-{i}" for i in range(30)]
    for name in names:
        for attempt in range(3):
            before = len(argon2_calls)
            assert hashing.verify_unknown(name, f"{PASSWORD}-{attempt}") is False
            [used] = verifications(argon2_calls[before:])  # exactly one verification a try
            assert used == hashing.parameters_for(name)
    used_sets = set(verifications(argon2_calls))
    assert used_sets == {parameters(**BIG), parameters(**MID), parameters(**SMALL)}
    # each set's dummy was made once, however many tries used it
    assert sorted(p for kind, p in argon2_calls if kind == "hash") == sorted(used_sets)
    # a name keeps its set in another process that has the same key (and the same census)
    other = PasswordHashing(max_concurrent=1, name_digest=fixed_digest, **SMALL)
    other.set_census({parameters(**SMALL): 2, parameters(**MID): 3, parameters(**BIG): 5})
    assert [other.parameters_for(n) for n in names] == [hashing.parameters_for(n) for n in names]
    other.close()


def test_without_a_census_unknown_names_cost_the_current_parameters(
    hashing: PasswordHashing, argon2_calls: list[tuple[str, HashParameters]]
) -> None:
    for census in ({}, {hashing.current: 7}):  # no users yet; every hash current
        hashing.set_census(census)
        argon2_calls.clear()
        for i in range(10):
            assert hashing.verify_unknown(f"nobody-{i}", PASSWORD) is False
        assert verifications(argon2_calls) == [hashing.current] * 10
    # the existing dummy path is unchanged: the current parameters, whatever the census
    hashing.set_census({parameters(**BIG): 1})
    argon2_calls.clear()
    assert hashing.verify_dummy(PASSWORD) is False
    assert asyncio.run(hashing.verify_async(None, PASSWORD)) is False
    assert verifications(argon2_calls) == [hashing.current] * 2


def test_a_parameter_set_argon2_refuses_falls_back_to_the_current_one(
    hashing: PasswordHashing, argon2_calls: list[tuple[str, HashParameters]]
) -> None:
    corrupt = HashParameters("argon2id", 19, 4, 1, 1)  # 4 KiB: below Argon2's floor
    hashing.set_census({corrupt: 1})
    assert hashing.verify_unknown("nobody", PASSWORD) is False
    assert verifications(argon2_calls) == [hashing.current]


# (b) many names follow the census


def test_unknown_names_follow_the_census_distribution(
    hashing: PasswordHashing, argon2_calls: list[tuple[str, HashParameters]]
) -> None:
    census = {parameters(**BIG): 600, parameters(**MID): 300, parameters(**SMALL): 100}
    hashing.set_census(census)
    tries = 3000
    for i in range(tries):
        hashing.verify_unknown(f"unknown-{i}@example.org", PASSWORD)
    drawn = Counter(verifications(argon2_calls))
    assert sum(drawn.values()) == tries
    total = sum(census.values())
    for parameter_set, count in census.items():
        expected = count / total
        # binomial standard deviation at most 0.0092 here: 0.04 is over 4 of them, and the
        # names and key are fixed, so this either always passes or never does
        assert abs(drawn[parameter_set] / tries - expected) < 0.04, (parameter_set, drawn)


def test_draw_order_moves_names_only_towards_the_current_set(hashing: PasswordHashing) -> None:
    """As outdated hashes are rehashed, an unknown name moves from an outdated set to the
    current one at most once, as an account does: never back, never between old sets."""
    old = parameters(**BIG)
    names = [f"n{i}" for i in range(2000)]
    seen: dict[str, list[HashParameters]] = {n: [] for n in names}
    for rehashed in range(0, 101, 10):
        hashing.set_census({old: 100 - rehashed, hashing.current: rehashed})
        for n in names:
            if not seen[n] or seen[n][-1] != hashing.parameters_for(n):
                seen[n].append(hashing.parameters_for(n))
    assert {tuple(path) for path in seen.values()} <= {(old,), (old, hashing.current), (hashing.current,)}


# (c) a known name and an unknown one: one verification each, from the same sets


def hash_with(costs: dict[str, int]) -> str:
    other = PasswordHashing(max_concurrent=1, **costs)
    try:
        return other.hash(PASSWORD)
    finally:
        other.close()


def add_users(services: Services, costs: dict[str, int], *names: str) -> None:
    with services.sessions.begin() as db:
        for name in names:
            add_user(db, username=name, email=None, name=None, password_hash=hash_with(costs))


def stored_hash(services: Services, username: str) -> str:
    with services.sessions() as db:
        value = db.scalar(select(User.password_hash).where(User.username == username))
    assert isinstance(value, str)
    return value


def test_known_and_unknown_names_cost_one_verification_from_the_same_sets(
    app: Starlette, argon2_calls: list[tuple[str, HashParameters]]
) -> None:
    services: Services = app.state.services  # the real wiring: keyring digest of the normalised name
    current = services.hashing.current  # alice and bob (seeded) have it
    add_users(services, BIG, "carol", "dave", "erin")
    refresh_census(services.sessions, services.hashing)  # what the background refresh does
    old = parameters(**BIG)

    known = {}
    for username in ("alice", "bob", "carol", "dave", "erin"):
        argon2_calls.clear()
        assert services.hashing.verify(stored_hash(services, username), PASSWORD + "-wrong") is False
        [known[username]] = verifications(argon2_calls)
    assert set(known.values()) == {current, old}

    unknown = {}
    for i in range(40):
        name = f"nobody-{i}"
        argon2_calls.clear()
        assert services.hashing.verify_unknown(name, PASSWORD) is False
        [unknown[name]] = verifications(argon2_calls)
        argon2_calls.clear()  # the async twin runs the same single verification in the pool
        assert asyncio.run(services.hashing.verify_unknown_async(name, PASSWORD)) is False
        assert verifications(argon2_calls) == [unknown[name]]
    assert set(unknown.values()) == set(known.values())  # both sets are drawn, nothing else
    # the name is normalised as the login does, so spelling it otherwise changes nothing
    for name in ("Nobody-1", " NOBODY-1 ", "nobody-1"):
        assert services.hashing.parameters_for(name) == unknown["nobody-1"]


# (d) the census follows rehashes


def test_census_refresh_picks_up_a_rehash_and_runs_no_argon2(
    app: Starlette, argon2_calls: list[tuple[str, HashParameters]]
) -> None:
    services: Services = app.state.services
    with services.sessions.begin() as db:  # from here on, every stored hash is outdated
        db.execute(update(User).values(password_hash=hash_with(BIG)))
        add_user(db, username="nopassword", email=None, name=None, password_hash=None)  # not counted
        add_user(
            db,
            username="imported",
            email=None,
            name=None,  # another scheme: not counted either
            password_hash="$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
        )
    names = [f"nobody-{i}" for i in range(50)]

    argon2_calls.clear()
    refresh_census(services.sessions, services.hashing)
    with services.sessions() as db:
        assert take_census(db) == {parameters(**BIG): 2}
    assert {services.hashing.parameters_for(n) for n in names} == {parameters(**BIG)}

    # alice signs in: her hash is rehashed with the current parameters (as the login does)
    new_hash = services.hashing.hash(PASSWORD)
    with services.sessions.begin() as db:
        db.execute(update(User).where(User.username == "alice").values(password_hash=new_hash))
    argon2_calls.clear()
    refresh_census(services.sessions, services.hashing)
    assert argon2_calls == []  # a refresh runs no Argon2
    with services.sessions() as db:
        assert take_census(db) == {parameters(**BIG): 1, services.hashing.current: 1}
    assert {services.hashing.parameters_for(n) for n in names} == {parameters(**BIG), services.hashing.current}


def test_the_background_refresh_takes_a_new_census_by_itself(app: Starlette) -> None:
    services: Services = app.state.services
    names = [f"nobody-{i}" for i in range(20)]
    assert {services.hashing.parameters_for(n) for n in names} == {services.hashing.current}
    old_hash = hash_with(BIG)

    async def scenario() -> set[HashParameters]:
        refresher = asyncio.create_task(keep_census_fresh(services.sessions, services.hashing, every=0.02))
        await asyncio.to_thread(_set_every_hash, services, old_hash)  # e.g. another process's writes
        deadline = time.monotonic() + 10
        while {services.hashing.parameters_for(n) for n in names} != {parameters(**BIG)}:
            assert time.monotonic() < deadline, "the census was not refreshed"
            await asyncio.sleep(0.02)
        refresher.cancel()
        return {services.hashing.parameters_for(n) for n in names}

    assert asyncio.run(scenario()) == {parameters(**BIG)}


def _set_every_hash(services: Services, value: str) -> None:
    with services.sessions.begin() as db:
        db.execute(update(User).values(password_hash=value))


# (e) idp user list --outdated-hashes


@pytest.fixture
def idp(
    database_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str]]:
    """`idp ARGS…` in this process, against the test database (SQLite and PostgreSQL)."""
    for name in [n for n in os.environ if n.startswith("IDP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("IDP_DATABASE_URL", database_url)
    monkeypatch.setenv("IDP_DATA_DIR", str(tmp_path / "var"))

    def run(*args: str, stdin: str = "", time_cost: int = 1, memory_kib: int = 8192) -> tuple[int, str]:
        with monkeypatch.context() as scoped:
            scoped.setenv("IDP_ARGON2_TIME_COST", str(time_cost))
            scoped.setenv("IDP_ARGON2_MEMORY_KIB", str(memory_kib))
            scoped.setattr(sys, "stdin", io.StringIO(stdin))
            code = main(list(args))
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out

    return run


def outdated_report(out: str) -> tuple[tuple[str, int], dict[str, int], str]:
    """(current set, its count), {outdated set: count}, the summary line."""
    *rows, summary = out.splitlines()
    cells = [row.split("\t") for row in rows]
    [current] = [(prefix, int(n)) for state, prefix, n in cells if state == "current"]
    outdated = {prefix: int(n) for state, prefix, n in cells if state == "outdated"}
    assert len(cells) == 1 + len(outdated)
    return current, outdated, summary


def test_user_list_outdated_hashes_counts_users_per_parameter_set(idp: Callable[..., tuple[int, str]]) -> None:
    code, out = idp("user", "list", "--outdated-hashes")  # no users yet
    assert code == 0
    current, outdated, summary = outdated_report(out)
    assert (current, outdated) == (("$argon2id$v=19$m=8192,t=1,p=1$", 0), {})
    assert summary.startswith("0 of 0 password hashes use outdated parameters")

    for username, time_cost, memory_kib in (
        ("alice", 1, 8192),
        ("bob", 1, 8192),
        ("carol", 2, 8192),
        ("dave", 1, 16384),
    ):
        code, _ = idp(
            "user",
            "add",
            username,
            "--password-stdin",
            stdin=PASSWORD + "\n",
            time_cost=time_cost,
            memory_kib=memory_kib,
        )
        assert code == 0
    assert idp("user", "add", "erin")[0] == 0  # no password: no hash to count

    code, out = idp("user", "list", "--outdated-hashes")
    assert code == 0
    current, outdated, summary = outdated_report(out)
    assert current == ("$argon2id$v=19$m=8192,t=1,p=1$", 2)
    assert outdated == {"$argon2id$v=19$m=8192,t=2,p=1$": 1, "$argon2id$v=19$m=16384,t=1,p=1$": 1}
    assert summary.startswith("2 of 4 password hashes use outdated parameters")

    # raise the cost: carol's set becomes the current one, the others outdated
    code, out = idp("user", "list", "--outdated-hashes", time_cost=2)
    assert code == 0
    current, outdated, summary = outdated_report(out)
    assert current == ("$argon2id$v=19$m=8192,t=2,p=1$", 1)
    assert outdated == {"$argon2id$v=19$m=8192,t=1,p=1$": 2, "$argon2id$v=19$m=16384,t=1,p=1$": 1}
    assert summary.startswith("3 of 4 password hashes use outdated parameters")

    code, out = idp("user", "list")  # without the option: the users, as before
    assert code == 0
    assert [line.split("\t")[0] for line in out.splitlines()] == ["alice", "bob", "carol", "dave", "erin"]


# (f) one bound for the pool and for direct callers


class OverlapProbe:
    """Wraps Argon2 entry points and records the most calls ever running at once."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self._lock = threading.Lock()

    def wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def probed(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            try:
                time.sleep(0.01)  # widen each call so calls that may overlap surely do
                return original(*args, **kwargs)
            finally:
                with self._lock:
                    self.running -= 1

        return probed


def run_everything_at_once(hashing: PasswordHashing, stored: str) -> None:
    """Two worker threads calling Argon2 directly (hash, verify, verify_unknown) while the
    pool runs hashes and verifications of its own."""
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(3):
                hashing.hash(PASSWORD)
                assert hashing.verify(stored, PASSWORD)
                assert not hashing.verify_unknown(f"nobody-{k}-{i}", PASSWORD)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    async def pool() -> None:
        await asyncio.wait_for(
            asyncio.gather(
                *(hashing.hash_async(PASSWORD) for _ in range(3)),
                *(hashing.verify_async(stored, PASSWORD) for _ in range(3)),
                *(hashing.verify_async(None, PASSWORD) for _ in range(2)),
                *(hashing.verify_unknown_async(f"pooled-{i}", PASSWORD) for i in range(3)),
            ),
            timeout=15,
        )

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(2)]
    for thread in threads:
        thread.start()
    asyncio.run(pool())
    for thread in threads:
        thread.join(timeout=15)
        assert not thread.is_alive(), "deadlock: a worker never finished"
    assert errors == []


@pytest.mark.parametrize("max_concurrent", [1, 2])
def test_direct_callers_and_the_pool_share_one_bound(max_concurrent: int, monkeypatch: pytest.MonkeyPatch) -> None:
    hashing = PasswordHashing(max_concurrent=max_concurrent, name_digest=fixed_digest, **SMALL)
    hashing.set_census({parameters(**BIG): 1, parameters(**SMALL): 1})
    stored = hashing.hash(PASSWORD)
    probe = OverlapProbe()
    monkeypatch.setattr(PasswordHasher, "verify", probe.wrap(PasswordHasher.verify))
    monkeypatch.setattr(PasswordHasher, "hash", probe.wrap(PasswordHasher.hash))
    monkeypatch.setattr(passwords, "hash_secret", probe.wrap(passwords.hash_secret))
    run_everything_at_once(hashing, stored)
    hashing.close()  # not on failure: after a deadlock it would wait for ever
    # with 1, two threads never hash at once; with 2 the probe does see overlap, so it could
    # have seen it with 1
    assert probe.peak == max_concurrent
