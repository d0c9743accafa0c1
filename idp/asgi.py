"""ASGI entry point for `idp serve --workers N` and external servers (uvicorn --factory)."""

from __future__ import annotations

from starlette.applications import Starlette

from idp.app import create_app
from idp.settings import load_settings


def create() -> Starlette:
    return create_app(load_settings())
