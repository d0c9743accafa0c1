"""Logging for `idp serve`: uvicorn's own loggers as uvicorn sets them, idp's warnings and
errors on stderr, and the audit trail (`idp.audit`) and the request log (`idp.access`) as
bare JSON lines, one per event or request, for a log shipper to pick up
(idp/audit/trail.py and idp/observability/access_log.py write them)."""

from __future__ import annotations

import copy
from typing import Any


def serve_log_config(*, access_log: bool = True) -> dict[str, Any]:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["bare"] = {"format": "%(message)s"}
    config["formatters"]["idp"] = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    config["handlers"]["audit"] = {"class": "logging.StreamHandler", "formatter": "bare", "stream": "ext://sys.stderr"}
    config["handlers"]["idp"] = {"class": "logging.StreamHandler", "formatter": "idp", "stream": "ext://sys.stderr"}
    config["loggers"]["idp"] = {"handlers": ["idp"], "level": "WARNING", "propagate": False}
    config["loggers"]["idp.audit"] = {"handlers": ["audit"], "level": "INFO", "propagate": False}
    # one JSON line per request (idp/observability/access_log.py), written in batches
    # (idp/observability/log_batching.py); IDP_ACCESS_LOG=0 turns it off
    if access_log:
        config["handlers"]["idp_requests"] = {"()": "idp.observability.access_log.stderr_handler", "formatter": "bare"}
    config["loggers"]["idp.access"] = {
        "handlers": ["idp_requests"] if access_log else [],
        "level": "INFO" if access_log else "WARNING",
        "propagate": False,
    }
    return config
