"""Counting Argon2 verifications, whichever entry point a code path uses (the login flow
verifies synchronously in its worker thread; /account through the async pool)."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import pytest

ENTRY_POINTS = ("verify", "verify_dummy", "verify_unknown", "verify_async", "verify_unknown_async")


def count_verifications(monkeypatch: pytest.MonkeyPatch, hashing: Any, calls: list[Any]) -> None:
    """Appends (entry point, stored hash or None) to `calls` for each verification. The
    entry points call each other (verify_async → verify): only the outermost is counted."""
    depth = {"now": 0}

    def wrap(name: str, original: Any) -> Any:
        if inspect.iscoroutinefunction(original):

            @functools.wraps(original)
            async def counted_async(*args: Any, **kwargs: Any) -> Any:
                if depth["now"] == 0:
                    calls.append((name, args[0] if name == "verify_async" else None))
                depth["now"] += 1
                try:
                    return await original(*args, **kwargs)
                finally:
                    depth["now"] -= 1

            return counted_async

        @functools.wraps(original)
        def counted(*args: Any, **kwargs: Any) -> Any:
            if depth["now"] == 0:
                calls.append((name, args[0] if name == "verify" else None))
            depth["now"] += 1
            try:
                return original(*args, **kwargs)
            finally:
                depth["now"] -= 1

        return counted

    for name in ENTRY_POINTS:
        original = getattr(hashing, name, None)
        if original is not None:
            monkeypatch.setattr(hashing, name, wrap(name, original))
