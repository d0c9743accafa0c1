"""The request id: one per HTTP request, returned in the X-Request-Id response header and
written on the request's log line and on every audit event the request records, so an
operator can go from a user's complaint (the id on their error page's response) to the log
lines and audit rows of that request.

An id sent by a trusted proxy (nginx's $request_id) is kept, so nginx's access log and
idp's lines share it; anyone else's is replaced, because an attacker-chosen id could be
used to make unrelated requests look related in the logs."""

from __future__ import annotations

import os
import re
from contextvars import ContextVar

HEADER = b"x-request-id"
_WELL_FORMED = re.compile(rb"[A-Za-z0-9._:-]{8,64}")

# Set by the request middleware; asyncio tasks and Starlette's threadpool copy the context,
# so the audit code finds it wherever the request's work runs.
current_request_id: ContextVar[str | None] = ContextVar("idp_request_id", default=None)


def new_request_id() -> str:
    return os.urandom(16).hex()


def accepted_request_id(sent: bytes | None) -> str | None:
    """A proxy's id if it is one we would have made up ourselves: short, plain characters."""
    if sent is not None and _WELL_FORMED.fullmatch(sent):
        return sent.decode("ascii")
    return None
