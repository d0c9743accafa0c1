"""Where the sync core runs. With SQLite and the in-process store every call is local and
short (tens of microseconds), and a hop to the threadpool costs more than the call itself
(measured: token requests +60% throughput inline), so it runs on the event loop. With
PostgreSQL or Redis a call waits on the network, so it runs in Starlette's threadpool
and the loop keeps serving. Argon2 never comes here: it has its own bounded pool."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

T = TypeVar("T")


async def run_blocking(request: Request, call: Callable[..., T], *args: object, **kwargs: object) -> T:
    if request.app.state.services.blocking_inline:
        return call(*args, **kwargs)
    return await run_in_threadpool(call, *args, **kwargs)
