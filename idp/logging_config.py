"""Logging for `idp serve`: uvicorn's own loggers as uvicorn sets them, idp's warnings and
errors on stderr, and the audit trail (`idp.audit`) as bare JSON lines, one per event, for
a log shipper to pick up (idp/security/audit.py writes them)."""
from __future__ import annotations

import copy
from typing import Any


def serve_log_config() -> dict[str, Any]:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["bare"] = {"format": "%(message)s"}
    config["formatters"]["idp"] = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    config["handlers"]["audit"] = {"class": "logging.StreamHandler", "formatter": "bare", "stream": "ext://sys.stderr"}
    config["handlers"]["idp"] = {"class": "logging.StreamHandler", "formatter": "idp", "stream": "ext://sys.stderr"}
    config["loggers"]["idp"] = {"handlers": ["idp"], "level": "WARNING", "propagate": False}
    config["loggers"]["idp.audit"] = {"handlers": ["audit"], "level": "INFO", "propagate": False}
    return config
