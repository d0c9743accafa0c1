"""`idp serve` under uvicorn: one process, or a supervisor and N worker processes sharing
one listening socket.

With workers, uvicorn's supervisor binds the socket and keeps its own copy open until it
exits. After SIGTERM the workers stop accepting and finish their requests, but the kernel
would go on queueing new connections on the supervisor's copy, which nobody accepts any
more: they hang until the supervisor exits and are then reset. Behind nginx a POST in that
queue cannot be retried elsewhere and becomes a 502. So the supervisor here closes its copy
before it tells the workers to stop: once they have closed theirs, new connections are
refused at once, and nginx sends them to another idp."""

from __future__ import annotations

from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess


class _SupervisorClosingItsSocket(Multiprocess):
    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()


def serve_workers(app_factory: str, *, workers: int, **options: Any) -> None:
    """`app_factory` is an import string ("module:function"): each worker builds its own app."""
    config = uvicorn.Config(app_factory, factory=True, workers=workers, **options)
    sock = config.bind_socket()
    try:
        _SupervisorClosingItsSocket(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
