"""Layering (STYLE.md §5): only idp/oidc imports Authlib; only idp/web (and the composition
root) import Starlette; the login chain imports neither."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "idp"
RULES = [
    pytest.param("authlib", {"oidc"}, set(), id="only oidc imports authlib"),
    pytest.param("starlette", {"web"}, {"app.py", "asgi.py"}, id="only web and the composition root import starlette"),
]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("library, allowed_packages, allowed_files", RULES)
def test_library_is_imported_only_where_allowed(library, allowed_packages, allowed_files):
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in allowed_packages or str(relative) in allowed_files:
            continue
        if any(name == library or name.startswith(library + ".") for name in imported_modules(path)):
            offenders.append(str(relative))
    assert offenders == []


def test_login_chain_imports_neither_authlib_nor_starlette():
    for path in (PACKAGE / "login").rglob("*.py"):
        names = imported_modules(path)
        assert not any(n.split(".")[0] in ("authlib", "starlette") for n in names), path
