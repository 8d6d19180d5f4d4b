"""Layers import one way: the model, templates and lint touch no database, HTTP or clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "engine"
FORBIDDEN = {
    "sqlite3", "aiosqlite", "asyncpg", "httpx", "openai", "fastapi", "uvicorn", "starlette",
    "socket", "time", "datetime", "asyncio", "subprocess",
    "engine.store", "engine.runner", "engine.api", "engine.cli", "engine.agents",
}  # fmt: skip
PURE = [
    *sorted((ENGINE / "model").glob("*.py")),
    *sorted((ENGINE / "lint").glob("*.py")),
    ENGINE / "templates.py",
    ENGINE / "sandbox.py",
    ENGINE / "schema.py",
]


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ENGINE)))
def test_pure_layers_import_no_io(path: Path) -> None:
    bad = {
        name
        for name in imported(path)
        if any(name == f or name.startswith(f"{f}.") for f in FORBIDDEN)
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_model_does_not_import_lint() -> None:
    for path in sorted((ENGINE / "model").glob("*.py")):
        assert not any(name.startswith("engine.lint") for name in imported(path)), path
