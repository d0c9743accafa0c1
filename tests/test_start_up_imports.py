"""What a started worker keeps resident (issue 19: idle RSS no higher than the peer's):
libraries that only some requests need are imported by those requests, not at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# library -> why it waits: together 11 MB resident per worker (idp serve on SQLite, measured)
LOADED_ON_DEMAND = {
    "webauthn": "passkey ceremonies (with pyOpenSSL: 5 MB resident in a serving worker)",
    "OpenSSL": "pyOpenSSL, through webauthn",
    "alembic": "`idp db upgrade` only (the readiness check reads the migration files)",
    "redis": "only with IDP_REDIS_URL",
    "httpcore": "outbound calls (client key sets, back-channel logout)",
    "segno": "the TOTP enrolment page's QR code",
    "jinja2": "the hosted pages and mail (a worker may answer only the machine endpoints)",
}

_PROBE = """
import json, sys
from starlette.testclient import TestClient
from idp.asgi import create
with TestClient(create()) as client:
    assert client.get("/readyz").status_code == 200
    assert client.get("/jwks").status_code == 200
    assert client.get("/.well-known/openid-configuration").status_code == 200
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_a_started_app_has_not_imported_what_only_some_requests_need(tmp_path):
    database = tmp_path / "idp.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")} | {
        "IDP_DATABASE_URL": f"sqlite:///{database}",
        "IDP_ISSUER": "http://127.0.0.1:8000",
    }
    subprocess.run([sys.executable, "-m", "idp", "db", "upgrade"], env=env, check=True, capture_output=True)
    probe = subprocess.run([sys.executable, "-c", _PROBE], env=env, check=True, capture_output=True, text=True)
    loaded = set(json.loads(probe.stdout.strip().splitlines()[-1]))
    assert loaded.isdisjoint(LOADED_ON_DEMAND), {
        name: LOADED_ON_DEMAND[name] for name in loaded & LOADED_ON_DEMAND.keys()
    }
