"""/healthz and /readyz (issue 8): what load balancers and the Dockerfile's HEALTHCHECK ask."""

from __future__ import annotations


def test_healthz_answers_while_the_process_runs(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_checks_database_schema_and_store(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": True, "migrations": True, "state_store": True}


def test_readyz_is_503_and_names_the_store_when_it_cannot_be_reached(client, monkeypatch):
    monkeypatch.setattr(client.app.state.services.store, "ping", lambda: False)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["state_store"] is False
