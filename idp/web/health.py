"""Health endpoints for load balancers and orchestrators: /healthz says the process
answers; /readyz says it can serve (database reachable, schema current, state store
reachable) and answers 503 naming what is not."""

from __future__ import annotations

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from idp.db.migrate import is_current
from idp.web.blocking import run_blocking
from idp.web.oauth_endpoints import NO_STORE, services_of
from idp.web.services import Services


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"}, headers=NO_STORE)


async def readyz(request: Request) -> Response:
    checks = await run_blocking(request, _checks, services_of(request))
    ready = all(checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
        headers=NO_STORE,
    )


def _checks(services: Services) -> dict[str, bool]:
    database = migrations = False
    try:
        with services.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        database = True
        migrations = is_current(services.engine)
    except Exception:  # noqa: BLE001 - any failure means "not ready", said in the answer
        pass
    return {"database": database, "migrations": migrations, "state_store": services.store.ping()}
