"""A logging handler that writes to stderr in batches of whole lines: when 64 KiB have
gathered, and at least once a second. The request log writes a line per request, and one
write(2) per line was a large part of a discovery or JWKS request's cost; nginx's
`access_log … buffer= flush=` makes the same trade. At most a second of request lines is
lost if the process is killed outright; a normal stop flushes (logging.shutdown). The audit
trail does not use this handler: its lines go out one by one."""

from __future__ import annotations

import logging
import os
import threading
import time

FLUSH_SECONDS = 1.0
MAX_BATCH_BYTES = 65536


class BatchingStderrHandler(logging.Handler):
    def __init__(self, fd: int = 2, flush_seconds: float = FLUSH_SECONDS, max_bytes: int = MAX_BATCH_BYTES) -> None:
        super().__init__()
        self._fd = fd
        self._max_bytes = max_bytes
        self._lines: list[str] = []
        self._size = 0
        self._flush_seconds = flush_seconds
        threading.Thread(target=self._flush_periodically, name="idp-log-flush", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held (Handler.handle)
        try:
            line = self.format(record) + "\n"
        except Exception:  # noqa: BLE001 - logging must never raise into the request
            self.handleError(record)
            return
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._max_bytes:
            self._write()

    def write_line(self, line: str) -> None:
        """The same as logging `line` through this handler, without a LogRecord: the request
        log's direct path (idp/observability/access_log.py)."""
        with self.lock:
            self._lines.append(line + "\n")
            self._size += len(line) + 1
            if self._size >= self._max_bytes:
                self._write()

    def flush(self) -> None:
        with self.lock:
            self._write()

    def close(self) -> None:
        self.flush()
        super().close()

    def _write(self) -> None:
        if not self._lines:
            return
        data = "".join(self._lines).encode("utf-8", "backslashreplace")
        self._lines.clear()
        self._size = 0
        try:
            while data:  # one write for the batch; the loop only finishes a short write
                data = data[os.write(self._fd, data) :]
        except OSError:
            pass  # stderr gone (closed pipe): nothing useful left to do with the lines

    def _flush_periodically(self) -> None:
        while True:
            time.sleep(self._flush_seconds)
            self.flush()
