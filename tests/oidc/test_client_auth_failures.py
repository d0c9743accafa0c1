"""Failed client authentication at the token endpoint (issue 14): the error says which
method the client is registered for, and the audit trail shows the first failure per
client and address in a window (then every power of ten, with the count), with the method
tried and the one registered, never the secret."""

from __future__ import annotations

import json

from sqlalchemy import select

from idp.db.models import AuditEvent
from tests.support.seed import SHOP_SECRET

GRANT = {"grant_type": "client_credentials"}


def failures(client) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    with client.app.state.services.sessions() as db:
        return list(
            db.scalars(
                select(AuditEvent).where(AuditEvent.kind == "client.authentication_failed").order_by(AuditEvent.id)
            )
        )


def test_the_wrong_method_is_named_with_the_registered_one_and_audited_without_the_secret(client):
    posted = client.post("/token", data={**GRANT, "client_id": "shop", "client_secret": SHOP_SECRET})
    assert posted.status_code == 401 and posted.json()["error"] == "invalid_client"
    assert posted.json()["error_description"] == (
        "Client authentication failed. This client is registered for client_secret_basic, not client_secret_post."
    )
    [row] = failures(client)
    assert (row.client_id, row.outcome) == ("shop", "failure")
    assert (
        row.detail["method_tried"] == "client_secret_post" and row.detail["method_registered"] == "client_secret_basic"
    )
    assert row.detail["count"] == 1 and SHOP_SECRET not in json.dumps(row.detail)


def test_a_wrong_secret_by_the_right_method_says_only_that_it_failed(client):
    wrong = client.post("/token", data=GRANT, auth=("shop", "not-the-secret-" + "x" * 30))
    assert wrong.status_code == 401 and wrong.json()["error_description"] == "Client authentication failed."
    [row] = failures(client)
    assert row.detail["method_tried"] == row.detail["method_registered"] == "client_secret_basic"


def test_a_flood_of_failures_writes_rows_at_1_and_10_with_the_count(client):
    for _ in range(12):
        assert client.post("/token", data=GRANT, auth=("shop", "wrong-" + "y" * 40)).status_code == 401
    assert [row.detail["count"] for row in failures(client)] == [1, 10]


def test_an_unknown_client_is_audited_without_a_name_or_a_method_hint(client):
    answer = client.post("/token", data=GRANT, auth=("ghost", "whatever-" + "z" * 30))
    assert answer.status_code == 401 and "registered for" not in answer.json()["error_description"]
    [row] = failures(client)
    assert row.client_id is None and row.detail["known_client"] is False and row.detail["method_registered"] is None
