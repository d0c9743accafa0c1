"""Two `idp serve` processes sharing one PostgreSQL schema and one Redis behave as one
identity provider: a login started on A is finished on B, the code is redeemed on B and
the refresh token works on A."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import processes
from tests.support.processes import (
    IdpProcess,
    ScriptedRP,
)

pytestmark = [pytest.mark.postgres, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[IdpProcess, IdpProcess]]:
    with processes.two_processes(tmp_path_factory.mktemp("two-processes")) as (_, a, b):
        yield a, b


def test_a_login_started_on_one_process_finishes_on_the_other(two_processes: tuple[IdpProcess, IdpProcess]) -> None:
    a, b = two_processes
    with ScriptedRP(issuer=a.url) as rp:
        # /authorize on A, login form and POST on B, resume and consent on A, code redeemed on B
        tokens = rp.full_login(authorize_on=a.url, login_on=b.url, resume_on=a.url, token_on=b.url)
        subject = rp.verify_id_token(a.url, tokens["id_token"])["sub"]

        refreshed = rp.refresh(a.url, tokens["refresh_token"])
        assert refreshed.status_code == 200, f"refresh on A: {refreshed.status_code} {refreshed.text}"
        body = refreshed.json()
        assert body["refresh_token"] != tokens["refresh_token"]  # rotated
        assert rp.verify_id_token(b.url, body["id_token"])["sub"] == subject

        # access tokens issued by one process are honoured by the other
        for base, token in ((a.url, tokens["access_token"]), (b.url, body["access_token"])):
            info = rp.userinfo(base, token)
            assert info.status_code == 200, f"userinfo on {base}: {info.status_code} {info.text}"
            assert info.json()["sub"] == subject

        # the successor works on B; the rotated-out one is refused there (reuse detection is shared)
        again = rp.refresh(b.url, body["refresh_token"])
        assert again.status_code == 200, f"refresh on B: {again.status_code} {again.text}"
        reused = rp.refresh(b.url, tokens["refresh_token"])
        assert reused.status_code == 400 and reused.json().get("error") == "invalid_grant", (
            f"reused refresh token on B: {reused.status_code} {reused.text}"
        )
