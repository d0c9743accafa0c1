"""The directory where prometheus-client's multi-process mode keeps each worker's values,
prepared by `idp serve --workers N` before any worker starts (and before prometheus_client
is imported: the mode is fixed at import). Imports nothing from prometheus_client itself."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextmanager
def metrics_directory(workers: int) -> Iterator[str | None]:
    """With several workers: a fresh private directory named in the environment (inherited
    by the workers), removed at exit. An admin's own PROMETHEUS_MULTIPROC_DIR is used instead
    and emptied of the previous run's files, whose counts would otherwise be added to this
    run's. One worker and no such variable: plain single-process metrics."""
    chosen = os.environ.get(MULTIPROC_ENV)
    if chosen:
        Path(chosen).mkdir(parents=True, exist_ok=True)
        for stale in Path(chosen).glob("*.db"):
            stale.unlink()
        yield chosen
        return
    if workers == 1:
        yield None
        return
    made = tempfile.mkdtemp(prefix="idp-metrics-")  # 0700: only this user reads the values
    os.environ[MULTIPROC_ENV] = made
    try:
        yield made
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(made, ignore_errors=True)
