"""idp/account is self-service logic, not HTTP (DESIGN.md §2): it imports neither Starlette
nor Authlib nor anything of idp/web or idp/oidc, and names no URL; idp/web maps its values
and refusals to answers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "idp" / "account"
FORBIDDEN = ("starlette", "authlib", "idp.web", "idp.oidc")


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def strings_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


MODULES = sorted(PACKAGE.glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_the_account_package_imports_no_http_layer(path: Path) -> None:
    assert not [name for name in imports_of(path) if name.startswith(FORBIDDEN)]


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_the_account_package_names_no_url(path: Path) -> None:
    assert not [text for text in strings_of(path) if text.startswith("/")]
